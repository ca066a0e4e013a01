// Package auth is how agents prove who they are to controllers, as build2's
// bbot and brep do it: a controller keeps the public keys of the agents it
// trusts, names each by its fingerprint (the SHA-256 of the key's DER
// encoding, as 64 lower-case hex digits), sends an agent that offers a
// registered fingerprint a random challenge with its task, and accepts the
// task's result only with the challenge signed by that key.
//
// RSA keys sign as bbot does with `openssl rsautl -sign`: PKCS#1 v1.5
// padding over the challenge's bytes themselves, with no digest, so a brep
// controller verifies our agent's signatures and we verify bbot's. Ed25519
// keys, our agent's default, sign the challenge's bytes as Ed25519 does.
// Challenges and signatures travel base64-encoded in the manifests.
package auth

import (
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
	"os"
)

// ChallengeSize is the number of random bytes in a challenge. It fits an
// RSA PKCS#1 v1.5 signature without a digest for keys of 1024 bits and up.
const ChallengeSize = 64

// ErrBadSignature means a signature does not verify against the key.
var ErrBadSignature = errors.New("signature does not verify")

// NewChallenge returns a fresh random challenge, base64-encoded as the task
// response's challenge field carries it.
func NewChallenge() (string, error) {
	b := make([]byte, ChallengeSize)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("challenge: %w", err)
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// Fingerprint is the SHA-256 of pub's DER (PKIX) encoding in lower-case hex,
// as task requests carry it.
func Fingerprint(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("fingerprint: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// Sign signs the base64-encoded challenge with key and returns the
// signature base64-encoded, as the result request's challenge field
// carries it.
func Sign(key crypto.Signer, challenge string) (string, error) {
	raw, err := base64.StdEncoding.DecodeString(challenge)
	if err != nil {
		return "", fmt.Errorf("challenge: not base64: %w", err)
	}
	sig, err := SignBytes(key, raw)
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(sig), nil
}

// SignBytes signs msg itself: PKCS#1 v1.5 with no digest for RSA (openssl
// rsautl -sign), Ed25519 for Ed25519 keys.
func SignBytes(key crypto.Signer, msg []byte) ([]byte, error) {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return rsa.SignPKCS1v15(nil, k, crypto.Hash(0), msg)
	case ed25519.PrivateKey:
		return ed25519.Sign(k, msg), nil
	}
	return nil, fmt.Errorf("sign: unsupported key type %T (want RSA or Ed25519)", key)
}

// Verify checks that sig (base64) is challenge (base64) signed by pub's
// private key.
func Verify(pub crypto.PublicKey, challenge, sig string) error {
	raw, err := base64.StdEncoding.DecodeString(challenge)
	if err != nil {
		return fmt.Errorf("challenge: not base64: %w", err)
	}
	s, err := base64.StdEncoding.DecodeString(sig)
	if err != nil {
		return fmt.Errorf("signature: not base64: %w", err)
	}
	return VerifyBytes(pub, raw, s)
}

// VerifyBytes checks that sig is msg signed by pub's private key, as
// SignBytes signs (and openssl rsautl -sign for RSA).
func VerifyBytes(pub crypto.PublicKey, msg, sig []byte) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if err := rsa.VerifyPKCS1v15(k, crypto.Hash(0), msg, sig); err != nil {
			return ErrBadSignature
		}
		return nil
	case ed25519.PublicKey:
		if !ed25519.Verify(k, msg, sig) {
			return ErrBadSignature
		}
		return nil
	}
	return fmt.Errorf("verify: unsupported key type %T (want RSA or Ed25519)", pub)
}

// ParsePrivateKey reads a PEM private key: PKCS#8 (RSA or Ed25519) or
// PKCS#1 RSA ("RSA PRIVATE KEY", as openssl genrsa writes). name is for
// errors.
func ParsePrivateKey(data []byte, name string) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block", name)
	}
	if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	switch k := k.(type) {
	case *rsa.PrivateKey:
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("%s: %T keys are not supported (want RSA or Ed25519)", name, k)
}

// ReadPrivateKey reads a PEM private key file (see ParsePrivateKey).
func ReadPrivateKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParsePrivateKey(data, path)
}

// ParsePublicKey reads a PEM public key: PKIX ("PUBLIC KEY", as openssl
// rsa -pubout and openssl pkey -pubout write) or PKCS#1 RSA ("RSA PUBLIC
// KEY"). A private key is accepted too and its public half returned. name
// is for errors.
func ParsePublicKey(data []byte, name string) (crypto.PublicKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block", name)
	}
	var pub crypto.PublicKey
	switch block.Type {
	case "RSA PUBLIC KEY":
		k, err := x509.ParsePKCS1PublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		pub = k
	case "PUBLIC KEY":
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		pub = k
	default:
		k, err := ParsePrivateKey(data, name)
		if err != nil {
			return nil, err
		}
		pub = k.Public()
	}
	switch pub.(type) {
	case *rsa.PublicKey, ed25519.PublicKey:
		return pub, nil
	}
	return nil, fmt.Errorf("%s: %T keys are not supported (want RSA or Ed25519)", name, pub)
}

// MarshalPublicKey returns pub as a PEM "PUBLIC KEY" block.
func MarshalPublicKey(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// MarshalPrivateKey returns key as a PEM "PRIVATE KEY" (PKCS#8) block.
func MarshalPrivateKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
