package hostos

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/buildfarm/buildfarm/internal/auth"
)

// The agents' key, after Build OS, which keeps bbot's private key on the
// state volume and passes it to every agent with --auth-key: on the host
// OS it is StateKey under the state volume (/state/etc/host-key.pem); an
// ordinary host's is InstallKey (hostos install). Its public half is
// written beside it with the suffix .pub.pem.
const (
	StateKey   = "etc/host-key.pem"
	InstallKey = "/etc/buildfarm/host-key.pem"
)

// HostKey is the agents' private key file and what an admin needs to
// register it at a controller.
type HostKey struct {
	Path        string // the private key (PEM), the agents' --auth-key
	PubPath     string // its public half (PEM)
	PublicPEM   []byte
	Fingerprint string // as the controller names it (auth.Fingerprint)
	Created     bool   // made by EnsureHostKey just now
}

// EnsureHostKey reads the private key at path (RSA, as bbot's, or
// Ed25519), or, when there is no file, makes an Ed25519 key there (mode
// 0600, its directory 0700 if new) and its public half beside it. A file
// that is not a key is an error naming it, never overwritten.
func EnsureHostKey(path string) (*HostKey, error) {
	k := &HostKey{Path: path, PubPath: strings.TrimSuffix(path, ".pem") + ".pub.pem"}
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("agents' key %s: %w", path, err)
		}
		if data, err = auth.MarshalPrivateKey(priv); err != nil {
			return nil, fmt.Errorf("agents' key %s: %w", path, err)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("agents' key: %w", err)
		}
		// O_EXCL: two monitors starting at once do not write two keys.
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, fmt.Errorf("agents' key: %w", err)
		}
		_, err = f.Write(data)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
			return nil, fmt.Errorf("agents' key: %w", err)
		}
		k.Created = true
	case err != nil:
		return nil, fmt.Errorf("agents' key: %w", err)
	}
	signer, err := auth.ParsePrivateKey(data, "agents' key "+path)
	if err != nil {
		return nil, err
	}
	if k.PublicPEM, err = auth.MarshalPublicKey(signer.Public()); err != nil {
		return nil, fmt.Errorf("agents' key %s: %w", path, err)
	}
	if k.Fingerprint, err = auth.Fingerprint(signer.Public()); err != nil {
		return nil, fmt.Errorf("agents' key %s: %w", path, err)
	}
	if old, err := os.ReadFile(k.PubPath); err != nil || string(old) != string(k.PublicPEM) {
		if err := os.WriteFile(k.PubPath, k.PublicPEM, 0o644); err != nil {
			return nil, fmt.Errorf("agents' public key: %w", err)
		}
	}
	return k, nil
}

// Register is the admin's instructions for registering the key of host
// at a controller that requires authentication, with the public key.
func (k *HostKey) Register(host string) string {
	what := "The agents of " + host + " authenticate with the key " + k.Path
	if k.Created {
		what += ", made just now"
	}
	return fmt.Sprintf(`%s.
Its fingerprint is %s.
At each controller that requires authentication, register its public key
(%s, below) with

    buildfarm controller key add --db DSN --name %s host-key.pub.pem

%s`, what, k.Fingerprint, k.PubPath, host, k.PublicPEM)
}
