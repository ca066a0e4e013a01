package auth

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"os"
	"testing"

	"github.com/buildfarm/buildfarm/internal/testenv"
)

// TestRSAInteropOpenSSL proves our RSA signatures are bbot's: openssl
// rsautl -sign signs a challenge that we verify, and openssl rsautl
// -verify recovers the challenge from our signature.
func TestRSAInteropOpenSSL(t *testing.T) {
	keyFile, pubFile := testenv.RSAKeyPair(t, t.TempDir())

	key, err := ReadPrivateKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM, err := os.ReadFile(pubFile)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ParsePublicKey(pubPEM, pubFile)
	if err != nil {
		t.Fatal(err)
	}
	challenge, err := NewChallenge()
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := base64.StdEncoding.DecodeString(challenge)

	// openssl signs as bbot does; we verify.
	sig := testenv.OpenSSL(t, raw, "rsautl", "-sign", "-inkey", keyFile)
	if err := Verify(pub, challenge, base64.StdEncoding.EncodeToString(sig)); err != nil {
		t.Errorf("Verify(openssl's signature) = %v, want nil", err)
	}
	// We sign; openssl verifies (rsautl -verify recovers the signed bytes).
	ours, err := Sign(key, challenge)
	if err != nil {
		t.Fatal(err)
	}
	oursRaw, _ := base64.StdEncoding.DecodeString(ours)
	got := testenv.OpenSSL(t, oursRaw, "rsautl", "-verify", "-pubin", "-inkey", pubFile)
	if !bytes.Equal(got, raw) {
		t.Errorf("openssl rsautl -verify of our signature = %x, want the challenge %x", got, raw)
	}
	// PKCS#1 v1.5 is deterministic: the same key and bytes give openssl's
	// signature exactly.
	if !bytes.Equal(oursRaw, sig) {
		t.Errorf("our signature differs from openssl rsautl -sign's")
	}
	// A signature of other bytes does not verify.
	other, _ := NewChallenge()
	if err := Verify(pub, other, ours); !errors.Is(err, ErrBadSignature) {
		t.Errorf("Verify(another challenge) = %v, want ErrBadSignature", err)
	}
}

func TestEd25519(t *testing.T) {
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pemKey, err := MarshalPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ParsePrivateKey(pemKey, "key")
	if err != nil {
		t.Fatal(err)
	}
	pemPub, _ := MarshalPublicKey(pub)
	p, err := ParsePublicKey(pemPub, "pub")
	if err != nil {
		t.Fatal(err)
	}
	c, _ := NewChallenge()
	sig, err := Sign(k, c)
	if err != nil {
		t.Fatal(err)
	}
	if err := Verify(p, c, sig); err != nil {
		t.Errorf("Verify = %v", err)
	}
	bad := []byte(sig)
	bad[3] ^= 1
	if err := Verify(p, c, string(bad)); err == nil {
		t.Errorf("Verify(a changed signature) = nil, want an error")
	}
	f1, _ := Fingerprint(pub)
	f2, _ := Fingerprint(k.Public())
	if f1 != f2 || len(f1) != 64 {
		t.Errorf("Fingerprint = %q and %q, want the same 64 hex digits", f1, f2)
	}
}

func TestParseErrors(t *testing.T) {
	if _, err := ParsePrivateKey([]byte("junk"), "k.pem"); err == nil {
		t.Error("ParsePrivateKey(junk) = nil error")
	}
	if _, err := ParsePublicKey([]byte("junk"), "p.pem"); err == nil {
		t.Error("ParsePublicKey(junk) = nil error")
	}
	rk, _ := rsa.GenerateKey(rand.Reader, 1024)
	if _, err := Sign(rk, "%%%"); err == nil {
		t.Error("Sign(not base64) = nil error")
	}
}
