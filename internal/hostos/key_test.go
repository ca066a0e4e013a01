package hostos

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/buildfarm/buildfarm/internal/auth"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// TestEnsureHostKey: the first call makes an Ed25519 key (mode 0600) and
// its public half, which openssl derives the same from the private key;
// the second reads the same key back; a bbot-style RSA key is used as it
// is; a file that is not a key is an error naming it, left in place.
func TestEnsureHostKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state", StateKey)
	k, err := EnsureHostKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !k.Created || k.PubPath != filepath.Join(dir, "state/etc/host-key.pub.pem") {
		t.Errorf("first EnsureHostKey: %+v, want Created and the public key beside it", k)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v, %v; want mode 0600", st.Mode(), err)
	}
	if pub := testenv.OpenSSL(t, nil, "pkey", "-in", path, "-pubout"); !bytes.Equal(pub, k.PublicPEM) {
		t.Errorf("openssl pkey -pubout:\n%s\nEnsureHostKey's public key:\n%s", pub, k.PublicPEM)
	}
	if txt := testenv.OpenSSL(t, nil, "pkey", "-in", path, "-noout", "-text"); !bytes.Contains(txt, []byte("ED25519")) {
		t.Errorf("not an Ed25519 key:\n%s", txt)
	}
	if b, _ := os.ReadFile(k.PubPath); !bytes.Equal(b, k.PublicPEM) {
		t.Errorf("%s holds %q, want the public key", k.PubPath, b)
	}
	again, err := EnsureHostKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if again.Created || again.Fingerprint != k.Fingerprint {
		t.Errorf("second EnsureHostKey: created %v, fingerprint %s; want the first key (%s) read back", again.Created, again.Fingerprint, k.Fingerprint)
	}
	for _, want := range []string{k.Fingerprint, "buildfarm controller key add", "--name host1", string(k.PublicPEM)} {
		if msg := k.Register("host1"); !strings.Contains(msg, want) {
			t.Errorf("Register lacks %q:\n%s", want, msg)
		}
	}

	rsaKey, rsaPub := testenv.RSAKeyPair(t, t.TempDir())
	rk, err := EnsureHostKey(rsaKey)
	if err != nil {
		t.Fatal(err)
	}
	pemPub, _ := os.ReadFile(rsaPub)
	pub, err := auth.ParsePublicKey(pemPub, rsaPub)
	if err != nil {
		t.Fatal(err)
	}
	if fp, _ := auth.Fingerprint(pub); rk.Created || rk.Fingerprint != fp {
		t.Errorf("RSA key: created %v, fingerprint %s; want %s (openssl rsa -pubout's)", rk.Created, rk.Fingerprint, fp)
	}

	bad := filepath.Join(dir, "bad.pem")
	os.WriteFile(bad, []byte("not a key\n"), 0o600)
	if _, err := EnsureHostKey(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("EnsureHostKey(not a key) = %v, want an error naming %s", err, bad)
	}
	if b, _ := os.ReadFile(bad); string(b) != "not a key\n" {
		t.Errorf("the bad file was overwritten: %q", b)
	}
}
