package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/buildfarm/buildfarm/internal/manifest"
)

// maxResponse bounds a controller's answer.
const maxResponse = 16 << 20

// serveControllers asks each controller in turn for a task and performs
// it, until ctx ends. Cancellation is a clean stop.
func (a *Agent) serveControllers(ctx context.Context, urls []string, ms []*machineState) error {
	// 1. Build the task request: this agent, its toolchain, its machines.
	// 2. POST it to each controller in turn until one answers with a task.
	// 3. Perform the task; sign the challenge; POST the result request.
	// 4. No task anywhere: wait --request-interval, then ask again.
	key, err := a.loadKey()
	if err != nil {
		return err
	}
	req := &manifest.TaskRequest{
		Agent:            a.agentName(),
		ToolchainName:    a.opts.ToolchainName,
		ToolchainVersion: a.opts.ToolchainVer,
		InteractiveMode:  "false",
	}
	if key != nil {
		req.Fingerprint = fingerprint(key.Public())
	}
	for _, m := range ms {
		req.Machines = append(req.Machines, m.machine.Header())
	}
	for ctx.Err() == nil {
		got := false
		for _, u := range urls {
			resp, err := a.requestTask(ctx, u, req)
			if err != nil {
				a.log.Warn("task request failed", "controller", u, "err", err)
				continue
			}
			if resp.Session == "" {
				a.log.Debug("no task", "controller", u)
				continue
			}
			got = true
			a.log.Info("task", "controller", u, "name", resp.Task.Name, "version", resp.Task.Version, "machine", resp.Task.Machine)
			res, err := a.perform(ctx, ms, resp.Task, "")
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				a.log.Error("task failed", "err", err)
				res = abnormalResult(resp.Task, err)
			}
			if err := a.postResult(ctx, resp, res, key); err != nil {
				a.log.Error("result not delivered", "url", resp.ResultURL, "err", err)
			}
			if a.opts.Once {
				return nil
			}
			break
		}
		if !got {
			select {
			case <-ctx.Done():
			case <-time.After(a.opts.RequestInterval):
			}
		}
	}
	return nil
}

func (a *Agent) agentName() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s-%d", host, a.opts.Instance)
}

// post sends a manifest stream to url and returns the answer's stream.
func (a *Agent) post(ctx context.Context, url string, ms []manifest.Manifest) ([]manifest.Manifest, error) {
	var body bytes.Buffer
	if err := manifest.Serialize(&body, ms); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, a.opts.RequestTimeout)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, url, &body)
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Content-Type", "text/manifest")
	resp, err := http.DefaultClient.Do(hr)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", url, err)
	}
	if len(data) > maxResponse {
		return nil, fmt.Errorf("%s: answer larger than %d bytes", url, maxResponse)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s: %s", url, resp.Status, bytes.TrimSpace(data[:min(len(data), 512)]))
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	return manifest.Parse(bytes.NewReader(data), url)
}

func (a *Agent) requestTask(ctx context.Context, url string, req *manifest.TaskRequest) (*manifest.TaskResponse, error) {
	ms, err := a.post(ctx, url, req.Manifests())
	if err != nil {
		return nil, err
	}
	if len(ms) == 0 {
		return &manifest.TaskResponse{}, nil
	}
	return manifest.ParseTaskResponse(ms, url, manifest.Lenient)
}

func (a *Agent) postResult(ctx context.Context, resp *manifest.TaskResponse, res *manifest.Result, key crypto.Signer) error {
	rr := &manifest.ResultRequest{Session: resp.Session, Result: *res}
	if resp.Challenge != "" {
		if key == nil {
			return errors.New("the controller sent a challenge but the agent has no --auth-key")
		}
		challenge, err := base64.StdEncoding.DecodeString(resp.Challenge)
		if err != nil {
			challenge = []byte(resp.Challenge)
		}
		sig, err := sign(key, challenge)
		if err != nil {
			return err
		}
		rr.Challenge = base64.StdEncoding.EncodeToString(sig)
	}
	_, err := a.post(ctx, resp.ResultURL, rr.Manifests())
	return err
}

// loadKey reads --auth-key, a PEM private key (PKCS#8, PKCS#1 RSA).
func (a *Agent) loadKey() (crypto.Signer, error) {
	if a.opts.AuthKey == "" {
		return nil, nil
	}
	data, err := os.ReadFile(a.opts.AuthKey)
	if err != nil {
		return nil, fmt.Errorf("--auth-key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("--auth-key %s: no PEM block", a.opts.AuthKey)
	}
	if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("--auth-key %s: %w", a.opts.AuthKey, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("--auth-key %s: %T cannot sign", a.opts.AuthKey, k)
	}
	return s, nil
}

// sign signs a challenge: RSA keys sign its SHA-256 (PKCS#1 v1.5), ed25519
// keys the challenge itself.
func sign(key crypto.Signer, challenge []byte) ([]byte, error) {
	switch key.(type) {
	case ed25519.PrivateKey:
		return key.Sign(rand.Reader, challenge, crypto.Hash(0))
	case *rsa.PrivateKey:
		sum := sha256.Sum256(challenge)
		return key.Sign(rand.Reader, sum[:], crypto.SHA256)
	}
	return nil, fmt.Errorf("unsupported key type %T", key)
}

// fingerprint is the SHA-256 of the public key's DER encoding, in hex, as
// task requests carry it.
func fingerprint(pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}
