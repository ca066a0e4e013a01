package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/auth"
	"github.com/buildfarm/buildfarm/internal/manifest"
)

// startController runs `buildfarm controller --listen 127.0.0.1:0 --db
// DB ARGS` until the test ends and returns its URL and log.
func startController(t *testing.T, db string, args ...string) (string, *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var log syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"controller", "--listen", "127.0.0.1:0", "--db", db}, args...), strings.NewReader(""), &log, &log)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controller ended with %v; log:\n%s", err, log.String())
		}
	})
	listen := regexp.MustCompile(`controller: listening on (http://127\.0\.0\.1:\d+)\n`)
	for start := time.Now(); time.Since(start) < 20*time.Second; time.Sleep(10 * time.Millisecond) {
		if m := listen.FindStringSubmatch(log.String()); m != nil {
			return m[1], &log
		}
		select {
		case err := <-done:
			t.Fatalf("controller ended with %v; log:\n%s", err, log.String())
		default:
		}
	}
	t.Fatalf("controller did not say where it listens; log:\n%s", log.String())
	return "", nil
}

// runCmd runs a buildfarm command line and returns its output and exit
// status.
func runCmd(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := run(ctx, args, strings.NewReader(""), &out, &errb)
	return out.String(), errb.String(), exitCode(err)
}

// agentDo acts as an agent offering busybox: it takes one task from the
// controller and reports status for it; false when there was no task.
func agentDo(t *testing.T, url string, status manifest.Status) bool {
	t.Helper()
	req := &manifest.TaskRequest{Agent: "cli-test", ToolchainName: "buildfarm", ToolchainVersion: "1.0.0",
		Machines: []manifest.MachineHeader{{ID: "busybox-1.0", Name: "busybox", Summary: "busybox"}}}
	body := postManifests(t, url+"/task", req.Manifests())
	ms, err := manifest.Parse(bytes.NewReader(body), "task response")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := manifest.ParseTaskResponse(ms.Manifests(), "task response", manifest.Lenient)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Session == "" {
		return false
	}
	rr := &manifest.ResultRequest{Session: resp.Session, Result: manifest.Result{
		Name: resp.Task.Name, Version: resp.Task.Version, Status: status}}
	postManifests(t, resp.ResultURL, rr.Manifests())
	return true
}

func postManifests(t *testing.T, url string, ms []manifest.Manifest) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := manifest.Serialize(&b, ms); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(url, "text/manifest", &b)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("POST %s: %d %s", url, resp.StatusCode, data)
	}
	return data
}

// TestControllerKeys registers, lists and removes an agent key.
func TestControllerKeys(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "db")
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pemData, _ := auth.MarshalPublicKey(pub)
	keyFile := filepath.Join(dir, "agent.pem")
	os.WriteFile(keyFile, pemData, 0o644)
	want, _ := auth.Fingerprint(pub)

	out, errOut, code := runCmd(t, "controller", "key", "add", "--db", db, "--name", "builder-1", keyFile)
	if code != 0 || out != want+"\n" {
		t.Fatalf("key add = %d %q %s, want the fingerprint %s", code, out, errOut, want)
	}
	out, _, code = runCmd(t, "controller", "key", "list", "--db", db)
	if code != 0 || !strings.Contains(out, want) || !strings.Contains(out, "builder-1") {
		t.Errorf("key list = %d %q, want the key and its name", code, out)
	}
	if _, _, code = runCmd(t, "controller", "key", "remove", "--db", db, want); code != 0 {
		t.Errorf("key remove = %d", code)
	}
	_, errOut, code = runCmd(t, "controller", "key", "remove", "--db", db, want)
	if code == 0 || !strings.Contains(errOut, "not registered") {
		t.Errorf("key remove again = %d %q, want an error saying not registered", code, errOut)
	}
	os.WriteFile(keyFile, []byte("not a key"), 0o644)
	_, errOut, code = runCmd(t, "controller", "key", "add", "--db", db, "--name", "x", keyFile)
	if code == 0 || !strings.Contains(errOut, keyFile) {
		t.Errorf("key add of garbage = %d %q, want an error naming the file", code, errOut)
	}
}

// TestControllerRefusals: an admin token on a plain listener off loopback,
// a bad buildtab and bad options stop the controller at start.
func TestControllerRefusals(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "db")
	tok := filepath.Join(dir, "token")
	os.WriteFile(tok, []byte("s3cret\n"), 0o600)
	bt := filepath.Join(dir, "buildtab")
	os.WriteFile(bt, []byte("busybox bb\n"), 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--listen", "0.0.0.0:0", "--admin-token-file", tok}, "refusing an admin token on plain HTTP off loopback"},
		{[]string{"--buildtab", bt}, bt + ":1: want MACHINE-PATTERN"},
		{[]string{"--max-attempts", "0"}, "max-attempts 0"},
		{[]string{"--auth", "maybe"}, `auth "maybe"`},
		{[]string{"--tls-cert", tok}, "tls-cert and tls-key go together"},
	} {
		_, errOut, code := runCmd(t, append([]string{"controller", "--db", db}, c.args...)...)
		if code == 0 || !strings.Contains(errOut, c.want) {
			t.Errorf("controller %v = %d %q, want an error saying %q", c.args, code, errOut, c.want)
		}
	}
}
