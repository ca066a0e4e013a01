package agent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/manifest"
)

// fakeController answers the first task request with a task and a
// challenge, later ones with no task, and records the result request.
type fakeController struct {
	t         *testing.T
	mu        sync.Mutex
	requests  []*manifest.TaskRequest
	result    *manifest.ResultRequest
	challenge []byte
	gotResult chan struct{}
}

func (c *fakeController) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	ms, err := manifest.Parse(bytes.NewReader(body), r.URL.Path)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch r.URL.Path {
	case "/task":
		req, err := manifest.ParseTaskRequest(ms, "task request", manifest.Strict)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		c.requests = append(c.requests, req)
		resp := &manifest.TaskResponse{}
		if len(c.requests) == 1 {
			task := &manifest.Task{Name: "hello", Version: "1.0.0", RepositoryURL: "https://example.org/hello.git",
				Machine: "busybox", Target: "x86_64-linux-gnu"}
			resp = &manifest.TaskResponse{Session: "s1", Challenge: base64.StdEncoding.EncodeToString(c.challenge),
				ResultURL: "http://" + r.Host + "/result", Task: task}
		}
		manifest.Serialize(w, resp.Manifests())
	case "/result":
		rr, err := manifest.ParseResultRequest(ms, "result request", manifest.Strict)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		c.result = rr
		close(c.gotResult)
	default:
		http.NotFound(w, r)
	}
}

// TestControllerProtocol runs the agent against a controller speaking
// bbot's protocol over HTTP: task request with the machine headers and the
// key's fingerprint, task response, result request with the signed
// challenge. The build itself is faked (--fake-build), so no VM runs.
func TestControllerProtocol(t *testing.T) {
	dir := t.TempDir()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "key.pem")
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	machines := filepath.Join(dir, "machines.manifest")
	os.WriteFile(machines, []byte(": 1\nid: m1\nname: busybox\nsummary: a busybox machine\n"), 0o644)

	c := &fakeController{t: t, challenge: []byte("prove it"), gotResult: make(chan struct{})}
	srv := httptest.NewServer(c)
	defer srv.Close()

	o := DefaultOptions()
	o.Machines, o.TFTP = filepath.Join(dir, "none"), filepath.Join(dir, "tftp")
	o.FakeMachine, o.FakeBuild, o.AuthKey, o.NoNetNS = machines, true, keyFile, true
	o.ToolchainVer = "1.0.0"
	o.RequestInterval = 50 * time.Millisecond
	a, err := New(o, slog.New(slog.DiscardHandler), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, []string{srv.URL + "/task"}) }()
	select {
	case <-c.gotResult:
	case <-ctx.Done():
		t.Fatal("no result request arrived")
	}
	// The agent asks again; then it stops cleanly on cancellation.
	time.Sleep(200 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run after cancellation = %v, want nil", err)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	req := c.requests[0]
	if req.ToolchainName != "default" || req.ToolchainVersion != "1.0.0" || len(req.Machines) != 1 ||
		req.Machines[0].Name != "busybox" || req.Fingerprint != fingerprint(pub) {
		t.Errorf("task request %+v: want toolchain default 1.0.0, the busybox machine and the key's fingerprint", req)
	}
	if len(c.requests) < 2 {
		t.Errorf("%d task requests, want the agent to ask again after its task", len(c.requests))
	}
	rr := c.result
	if rr.Session != "s1" || rr.Result.Name != "hello" || rr.Result.Status != manifest.StatusAbort {
		t.Errorf("result request session %q, result %s %v; want s1, hello, abort (fake build)", rr.Session, rr.Result.Name, rr.Result.Status)
	}
	sig, err := base64.StdEncoding.DecodeString(rr.Challenge)
	if err != nil || !ed25519.Verify(pub, c.challenge, sig) {
		t.Errorf("challenge signature %q does not verify against the agent's key (%v)", rr.Challenge, err)
	}
}
