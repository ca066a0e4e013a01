package controller

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/archive"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// TestSubmitValidation: bad submissions get 400 with a clear message and
// store nothing.
func TestSubmitValidation(t *testing.T) {
	st := openStore(t, "")
	s := startServer(t, st, nil)
	ctx := context.Background()
	c, _ := NewAPIClient(s.URL(), "", nil)
	a, err := c.PutArchive(ctx, gzipped(t, "sources"))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := helloTemplate(t)
	noSteps := ": 1\nname: hello\nversion: 1.0.0\n"
	for _, tc := range []struct {
		name string
		body string
		want string
	}{
		{"bad JSON", `{"template": `, "bad JSON"},
		{"unknown field", `{"template": "x", "colour": "red"}`, `unknown field "colour"`},
		{"no template", `{"archive": "` + a.SHA256 + `"}`, "no template"},
		{"bad template", `{"archive": "` + a.SHA256 + `", "template": ": 1\nname hello\n"}`, "template:2:"},
		{"no steps", jsonSubmit(a.SHA256, noSteps, ""), "no steps"},
		{"unknown config", jsonSubmit(a.SHA256, tmpl, `"configs": ["nope"],`), `configuration "nope"`},
		{"bad name", jsonSubmit(a.SHA256, tmpl, `"name": "hello world",`), "not a package name"},
		{"bad version", jsonSubmit(a.SHA256, tmpl, `"version": "1 0",`), "not a package version"},
		{"no sources", `{"template": ` + quote(tmpl) + `}`, "no sources"},
		{"archive not uploaded", jsonSubmit(strings.Repeat("a", 64), tmpl, ""), "not uploaded"},
		{"archive not a sum", jsonSubmit("../../etc/passwd", tmpl, ""), "not a SHA-256"},
		{"both sources", jsonSubmit(a.SHA256, tmpl, `"git": {"url": "x", "revision": "y"},`), "both"},
		{"timeout too long", jsonSubmit(a.SHA256, tmpl, `"timeout": "100h",`), "longer than"},
		{"bad timeout", jsonSubmit(a.SHA256, tmpl, `"timeout": "soon",`), "not a positive duration"},
		{"bad toolchain", jsonSubmit(a.SHA256, tmpl, `"toolchain": "a b",`), "not a toolchain name"},
		{"git option as URL", `{"template": ` + quote(tmpl) + `, "git": {"url": "--upload-pack=touch /tmp/x", "revision": "main"}}`, "not a repository URL"},
		{"two objects", `{"template": "x"} {}`, "more than one object"},
	} {
		resp, err := http.Post(s.URL()+"/api/v1/submissions", "application/json", strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		var e apiErrorBody
		err = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != 400 || err != nil || !strings.Contains(e.Error, tc.want) {
			t.Errorf("%s: %d %q (%v), want 400 with an error saying %q", tc.name, resp.StatusCode, e.Error, err, tc.want)
		}
	}
	if subs, _ := st.Submissions(ctx, 0, 0); len(subs) != 0 {
		t.Errorf("submissions after bad ones: %d, want none", len(subs))
	}
	// An archive that is not gzip, and one over the limit.
	if _, err := c.PutArchive(ctx, []byte("plain text")); err == nil || !strings.Contains(err.Error(), "not gzip") {
		t.Errorf("PutArchive(plain text) = %v, want not gzip", err)
	}
	small := startServer(t, st, func(o *Options) { o.MaxArchive = 100 })
	cs, _ := NewAPIClient(small.URL(), "", nil)
	if _, err := cs.PutArchive(ctx, bytes.Repeat([]byte{0x1f}, 101)); err == nil || err.(*APIError).StatusCode != 413 {
		t.Errorf("PutArchive over --max-archive = %v, want 413", err)
	}
}

func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"', '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case '\n':
			b.WriteString(`\n`)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func jsonSubmit(sum, tmpl, extra string) string {
	return `{` + extra + `"archive": "` + sum + `", "template": ` + quote(tmpl) + `}`
}

// TestHostilePaths: odd URLs get 4xx, never a panic or a file.
func TestHostilePaths(t *testing.T) {
	st := openStore(t, "")
	s := startServer(t, st, nil)
	for _, p := range []string{
		"/archives/../../etc/passwd", "/archives/%2e%2e%2fetc%2fpasswd", "/archives/" + strings.Repeat("A", 64),
		"/archives/" + strings.Repeat("a", 64), "/api/v1/submissions/-1", "/api/v1/submissions/0",
		"/api/v1/submissions/99999999999999999999", "/api/v1/submissions/1", "/api/v1/tasks/x",
		"/api/v1/tasks/1/result", "/api/v1/tasks/%00", "/api/v1/nothing", "/api/v1/submissions?limit=-1",
		"/api/v1/submissions?limit=x", "/nothing",
	} {
		resp, err := http.Get(s.URL() + p)
		if err != nil {
			t.Fatalf("GET %s: %v", p, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode < 400 || resp.StatusCode >= 500 {
			t.Errorf("GET %s = %d %s, want 4xx", p, resp.StatusCode, body)
		}
	}
}

// TestSubmitGit: the controller fetches a revision of a git repository,
// packs it without .git, and the tasks carry it.
func TestSubmitGit(t *testing.T) {
	testenv.NeedProgram(t, "git")
	repo := gitRepo(t)
	st := openStore(t, "")
	s := startServer(t, st, nil)
	c, _ := NewAPIClient(s.URL(), "", nil)
	ctx := context.Background()
	first := gitOut(t, repo, "rev-parse", "HEAD~1")
	for _, c2 := range []struct{ rev, want, content string }{
		{"main", gitOut(t, repo, "rev-parse", "HEAD"), "two\n"},
		{first, first, "one\n"},
		{"v1", first, "one\n"},
	} {
		sub, err := c.Submit(ctx, &SubmitRequest{Git: &GitSource{URL: repo, Revision: c2.rev}, Template: helloTemplate(t), Configs: []string{"all"}})
		if err != nil {
			t.Fatalf("Submit(git %s): %v", c2.rev, err)
		}
		if sub.Revision != c2.want || sub.Repository != repo || len(sub.Tasks) != 2 {
			t.Errorf("Submit(git %s) = revision %s, repository %s, %d tasks; want %s, %s, 2", c2.rev, sub.Revision, sub.Repository, len(sub.Tasks), c2.want, repo)
		}
		data, err := st.Archive(ctx, sub.Archive)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		if err := archive.Unpack(bytes.NewReader(data), dir); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(dir, "file.txt"))
		if err != nil || string(got) != c2.content {
			t.Errorf("git %s: file.txt = %q, %v; want %q", c2.rev, got, err, c2.content)
		}
		if _, err := os.Stat(filepath.Join(dir, ".git")); err == nil {
			t.Errorf("git %s: the archive holds .git", c2.rev)
		}
	}
	_, err := c.Submit(ctx, &SubmitRequest{Git: &GitSource{URL: repo, Revision: "nope"}, Template: helloTemplate(t)})
	if err == nil || !strings.Contains(err.Error(), `revision "nope": not found`) {
		t.Errorf("Submit(git nope) = %v, want revision not found", err)
	}
	_, err = c.Submit(ctx, &SubmitRequest{Git: &GitSource{URL: "ext::sh -c touch% /tmp/pwned", Revision: "main"}, Template: helloTemplate(t)})
	if err == nil || err.(*APIError).StatusCode != 400 {
		t.Errorf("Submit(git ext::) = %v, want 400", err)
	}
}

// gitRepo makes a repository with two commits on main, the first tagged
// v1.
func gitRepo(t *testing.T) string {
	t.Helper()
	repo := t.TempDir()
	gitOut(t, repo, "init", "-q", "-b", "main")
	for i, content := range []string{"one\n", "two\n"} {
		if err := os.WriteFile(filepath.Join(repo, "file.txt"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		gitOut(t, repo, "add", "file.txt")
		gitOut(t, repo, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", content)
		if i == 0 {
			gitOut(t, repo, "tag", "v1")
		}
	}
	return repo
}

func gitOut(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestTLS serves HTTPS with a self-signed certificate, and refuses an
// admin token on plain HTTP off loopback.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, dir)
	st := openStore(t, "")
	s := startServer(t, st, func(o *Options) {
		o.TLSCert, o.TLSKey, o.AdminToken = certFile, keyFile, "tok"
		o.Listen = "0.0.0.0:0"
	})
	if !strings.HasPrefix(s.URL(), "https://") {
		t.Fatalf("URL() = %s, want https", s.URL())
	}
	_, port, _ := net.SplitHostPort(s.ln.Addr().String())
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	c, _ := NewAPIClient("https://127.0.0.1:"+port, "tok", hc)
	if _, err := c.PutArchive(context.Background(), gzipped(t, "x")); err != nil {
		t.Errorf("PutArchive over TLS: %v", err)
	}
	if _, err := NewAPIClient("https://127.0.0.1:"+port, "", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("https://127.0.0.1:" + port + "/api/v1/queue"); err == nil {
		t.Errorf("GET without trusting the certificate succeeded")
	}

	for _, c := range []struct {
		listen   string
		insecure bool
		wantErr  bool
	}{
		{"0.0.0.0:0", false, true},
		{":0", false, true},
		{"0.0.0.0:0", true, false},
		{"127.0.0.1:0", false, false},
		{"[::1]:0", false, false},
	} {
		o := DefaultOptions()
		o.Listen, o.AdminToken, o.Insecure = c.listen, "tok", c.insecure
		srv, err := New(st, o, nil)
		if err != nil {
			t.Fatal(err)
		}
		err = srv.Listen()
		if (err != nil) != c.wantErr || (err != nil && !strings.Contains(err.Error(), "refusing an admin token")) {
			t.Errorf("Listen(%s, insecure %v) with a token = %v, want refused: %v", c.listen, c.insecure, err, c.wantErr)
		}
		if err == nil {
			srv.ln.Close()
		}
	}
}

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key,
// and returns their files and a pool trusting it.
func selfSigned(t *testing.T, dir string) (string, string, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "controller"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}
