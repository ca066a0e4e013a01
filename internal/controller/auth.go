package controller

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/buildfarm/buildfarm/internal/auth"
	"github.com/buildfarm/buildfarm/internal/store"
)

// AuthMode says when agents must authenticate (see the package
// documentation).
type AuthMode string

const (
	AuthAuto     AuthMode = "auto"     // required once a key is registered
	AuthRequired AuthMode = "required" // a registered key for every task
	AuthOptional AuthMode = "optional" // challenge registered agents only
)

// ParseAuthMode checks an --auth value.
func ParseAuthMode(s string) (AuthMode, error) {
	switch m := AuthMode(s); m {
	case AuthAuto, AuthRequired, AuthOptional:
		return m, nil
	}
	return "", fmt.Errorf("auth %q: not auto, required or optional", s)
}

// keysCacheFor is how long AuthAuto trusts its last look at whether any
// key is registered.
const keysCacheFor = 2 * time.Second

// authRequired says whether agents must authenticate now.
func (s *Server) authRequired(ctx context.Context) (bool, error) {
	switch s.opts.Auth {
	case AuthRequired:
		return true, nil
	case AuthOptional:
		return false, nil
	}
	s.keysMu.Lock()
	defer s.keysMu.Unlock()
	if s.keysSeen || time.Since(s.keysAt) < keysCacheFor {
		return s.keysSeen, nil
	}
	keys, err := s.store.Keys(ctx)
	if err != nil {
		return false, fmt.Errorf("agent keys: %w", err)
	}
	s.keysSeen, s.keysAt = len(keys) > 0, time.Now()
	return s.keysSeen, nil
}

// agentKey returns the registered public key of fingerprint fp, or nil
// when none is registered.
func (s *Server) agentKey(ctx context.Context, fp string) (crypto.PublicKey, error) {
	if fp == "" {
		return nil, nil
	}
	k, err := s.store.Key(ctx, fp)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("agent key %s: %w", fp, err)
	}
	pub, err := auth.ParsePublicKey(k.PEM, "agent key "+fp)
	if err != nil {
		return nil, err
	}
	return pub, nil
}

// NewKey reads a PEM public key (see auth.ParsePublicKey; file names it in
// errors) and returns it as a store.Key named name.
func NewKey(pemData []byte, file, name string) (store.Key, error) {
	if strings.TrimSpace(name) == "" {
		return store.Key{}, errors.New("key: no name (whose key it is)")
	}
	pub, err := auth.ParsePublicKey(pemData, file)
	if err != nil {
		return store.Key{}, err
	}
	fp, err := auth.Fingerprint(pub)
	if err != nil {
		return store.Key{}, fmt.Errorf("%s: %w", file, err)
	}
	der, err := auth.MarshalPublicKey(pub)
	if err != nil {
		return store.Key{}, fmt.Errorf("%s: %w", file, err)
	}
	return store.Key{Fingerprint: fp, PEM: der, Name: name, Added: time.Now().UTC()}, nil
}

// admin wraps a handler of the submit API that changes something: with an
// admin token, the request must carry it as "Authorization: Bearer TOKEN";
// without one, only a loopback-only controller accepts the request, and
// only from loopback.
func (s *Server) admin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := s.checkAdmin(r); err != nil {
			s.log.Warn("admin request refused", "method", r.Method, "path", r.URL.Path, "from", r.RemoteAddr, "err", err)
			code := http.StatusForbidden
			if s.opts.AdminToken != "" {
				code = http.StatusUnauthorized
				w.Header().Set("WWW-Authenticate", `Bearer realm="buildfarm"`)
			}
			apiError(w, code, err)
			return
		}
		h(w, r)
	}
}

func (s *Server) checkAdmin(r *http.Request) error {
	if s.opts.AdminToken == "" {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		if !s.localOnly || !isLoopbackHost(host) {
			return errors.New("this controller has no admin token: it accepts submissions only on a loopback listener without a public --url (start it with --admin-token-file)")
		}
		return nil
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return errors.New("admin token required (Authorization: Bearer TOKEN)")
	}
	// Compare digests, so that the time taken says nothing about the
	// token's length or contents.
	a, b := sha256.Sum256([]byte(strings.TrimSpace(got))), sha256.Sum256([]byte(s.opts.AdminToken))
	if subtle.ConstantTimeCompare(a[:], b[:]) != 1 {
		return errors.New("wrong admin token")
	}
	return nil
}
