package controller

import (
	"context"
	"encoding/base64"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/buildfarm/buildfarm/internal/auth"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/store"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// register registers pub's key and returns its fingerprint.
func register(t *testing.T, st store.Store, pemData []byte) string {
	t.Helper()
	k, err := NewKey(pemData, "key.pem", "test agent")
	if err != nil {
		t.Fatalf("NewKey: %v", err)
	}
	if err := st.AddKey(context.Background(), k); err != nil {
		t.Fatalf("AddKey: %v", err)
	}
	return k.Fingerprint
}

// TestAuthEd25519: with a key registered (auth auto: required), an unknown
// key gets no task, a missing or wrong signature is refused, and nothing
// is stored in either case; the right signature is accepted.
func TestAuthEd25519(t *testing.T) {
	st := openStore(t, "")
	s := startServer(t, st, nil)
	ctx := context.Background()
	key, stranger := newEd25519(t), newEd25519(t)
	pub, _ := auth.MarshalPublicKey(key.Public())
	fp := register(t, st, pub)
	strangerFP, _ := auth.Fingerprint(stranger.Public())
	sub := submitHello(t, s, nil)
	id := sub.Tasks[0].ID

	for _, c := range []struct{ name, fp, want string }{
		{"unknown key", strangerFP, "is not registered"},
		{"no key", "", "no fingerprint"},
	} {
		code, body := post(t, s.URL()+"/task", agentReq(c.fp, "busybox").Manifests(), nil)
		if code != http.StatusUnauthorized || !strings.Contains(string(body), c.want) {
			t.Errorf("%s: task request = %d %s, want 401 saying %q", c.name, code, body, c.want)
		}
	}
	if as, _ := st.Agents(ctx); len(as) != 0 {
		t.Errorf("agents after refused requests: %+v, want none recorded", as)
	}
	if tk := taskOf(t, st, id); tk.State != store.Queued {
		t.Errorf("task after refused requests: %s, want queued", tk.State)
	}

	resp := askTask(t, s.URL()+"/task", agentReq(fp, "busybox"), nil)
	if resp.Session == "" || resp.Challenge == "" {
		t.Fatalf("registered agent got %+v, want a task with a challenge", resp)
	}
	wrong, _ := auth.Sign(stranger, resp.Challenge)
	for _, c := range []struct{ name, sig, want string }{
		{"no signature", "", "not signed"},
		{"wrong key's signature", wrong, "does not verify"},
		{"garbage signature", base64.StdEncoding.EncodeToString([]byte("garbage")), "does not verify"},
	} {
		code, body := post(t, resp.ResultURL, resultFor(resp, manifest.StatusSuccess, c.sig), nil)
		if code != http.StatusForbidden || !strings.Contains(string(body), c.want) {
			t.Errorf("%s: result = %d %s, want 403 saying %q", c.name, code, body, c.want)
		}
		if tk := taskOf(t, st, id); tk.State != store.Running {
			t.Errorf("%s: task %s, want still running", c.name, tk.State)
		}
		if _, err := st.Result(ctx, id); !isNotFound(err) {
			t.Errorf("%s: Result = %v, want not found", c.name, err)
		}
	}
	sig, err := auth.Sign(key, resp.Challenge)
	if err != nil {
		t.Fatal(err)
	}
	if code, body := post(t, resp.ResultURL, resultFor(resp, manifest.StatusSuccess, sig), nil); code != 200 {
		t.Fatalf("signed result = %d %s, want 200", code, body)
	}
	if tk := taskOf(t, st, id); tk.State != store.Done || tk.Status != "success" {
		t.Errorf("task after the signed result: %s %s, want done success", tk.State, tk.Status)
	}
}

// TestAuthOptional: an agent without a key gets a task without a
// challenge; a registered one is still challenged.
func TestAuthOptional(t *testing.T) {
	st := openStore(t, "")
	s := startServer(t, st, func(o *Options) { o.Auth = AuthOptional })
	key := newEd25519(t)
	pub, _ := auth.MarshalPublicKey(key.Public())
	fp := register(t, st, pub)
	submitHello(t, s, func(r *SubmitRequest) { r.Configs = []string{"bb"} })
	submitHello(t, s, func(r *SubmitRequest) { r.Configs = []string{"bb"} })
	if resp := askTask(t, s.URL()+"/task", agentReq("", "busybox"), nil); resp.Session == "" || resp.Challenge != "" {
		t.Errorf("optional auth, no key: %+v, want a task without a challenge", resp)
	}
	if resp := askTask(t, s.URL()+"/task", agentReq(fp, "busybox"), nil); resp.Session == "" || resp.Challenge == "" {
		t.Errorf("optional auth, registered key: %+v, want a task with a challenge", resp)
	}
}

// TestAuthRSAOpenSSL: a bbot agent's RSA key, its challenge signed with
// openssl rsautl -sign, is accepted.
func TestAuthRSAOpenSSL(t *testing.T) {
	keyFile, pubFile := testenv.RSAKeyPair(t, t.TempDir())
	pub, err := os.ReadFile(pubFile)
	if err != nil {
		t.Fatal(err)
	}
	st := openStore(t, "")
	s := startServer(t, st, func(o *Options) { o.Auth = AuthRequired })
	fp := register(t, st, pub)
	sub := submitHello(t, s, nil)
	resp := askTask(t, s.URL()+"/?build-task", agentReq(fp, "busybox"), nil)
	if resp.Challenge == "" {
		t.Fatalf("task response %+v: no challenge", resp)
	}
	raw, _ := base64.StdEncoding.DecodeString(resp.Challenge)
	sig := base64.StdEncoding.EncodeToString(testenv.OpenSSL(t, raw, "rsautl", "-sign", "-inkey", keyFile))
	if code, body := post(t, s.URL()+"/?build-result", resultFor(resp, manifest.StatusSuccess, sig), nil); code != 200 {
		t.Fatalf("result signed by openssl rsautl = %d %s, want 200", code, body)
	}
	if tk := taskOf(t, st, sub.Tasks[0].ID); tk.State != store.Done {
		t.Errorf("task: %s, want done", tk.State)
	}
}

// TestAdminToken: with a token, writes need it; reads do not.
func TestAdminToken(t *testing.T) {
	st := openStore(t, "")
	s := startServer(t, st, func(o *Options) { o.AdminToken = "s3cret" })
	ctx := context.Background()
	for _, tok := range []string{"", "wrong", "s3cre"} {
		c, _ := NewAPIClient(s.URL(), tok, nil)
		_, err := c.PutArchive(ctx, []byte("x"))
		if ae, ok := err.(*APIError); !ok || ae.StatusCode != http.StatusUnauthorized {
			t.Errorf("PutArchive with token %q = %v, want 401", tok, err)
		}
	}
	c, _ := NewAPIClient(s.URL(), "", nil)
	if _, err := c.Submissions(ctx, 0, 0); err != nil {
		t.Errorf("Submissions without a token = %v, want allowed", err)
	}
	c, _ = NewAPIClient(s.URL(), "s3cret", nil)
	if _, err := c.Submissions(ctx, 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutArchive(ctx, gzipped(t, "x")); err != nil {
		t.Errorf("PutArchive with the token = %v", err)
	}
}

// TestNoTokenPublicURL: without a token, a controller with a public URL
// (behind a proxy) refuses writes.
func TestNoTokenPublicURL(t *testing.T) {
	st := openStore(t, "")
	s := startServer(t, st, func(o *Options) { o.URL = "https://ci.example.org" })
	c, _ := NewAPIClient(s.URL(), "", nil)
	_, err := c.PutArchive(context.Background(), gzipped(t, "x"))
	if ae, ok := err.(*APIError); !ok || ae.StatusCode != http.StatusForbidden || !strings.Contains(ae.Message, "admin token") {
		t.Errorf("PutArchive without a token behind a public URL = %v, want 403 about the admin token", err)
	}
	// Result URLs name the public URL.
	submitHelloToken(t, st)
	resp := askTask(t, s.URL()+"/task", agentReq("", "busybox"), nil)
	if resp.ResultURL != "https://ci.example.org/result" || !strings.HasPrefix(resp.Task.ArchiveURL, "https://ci.example.org/archives/") {
		t.Errorf("result URL %q, archive URL %q: want them under https://ci.example.org", resp.ResultURL, resp.Task.ArchiveURL)
	}
}

// submitHelloToken submits examples/hello through a second, loopback-only
// controller on st.
func submitHelloToken(t *testing.T, st store.Store) {
	t.Helper()
	submitHello(t, startServer(t, st, nil), nil)
}
