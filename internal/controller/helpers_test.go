package controller

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/archive"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/store"
)

const testBuildtab = `# machine pattern, name, target, classes
busybox*  bb     x86_64-linux-gnu
debian-*  deb    x86_64-linux-gnu  full
`

// openStore opens a real SQLite store in a temporary directory (or the
// database file db, when not empty).
func openStore(t *testing.T, db string) store.Store {
	t.Helper()
	if db == "" {
		db = filepath.Join(t.TempDir(), "controller.db")
	}
	st, err := store.Open(context.Background(), db, nil)
	if err != nil {
		t.Fatalf("store.Open(%s): %v", db, err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// testLog logs to the test's output.
func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// startServer runs a controller on 127.0.0.1:0 over st until the test
// ends; edit changes its options first.
func startServer(t *testing.T, st store.Store, edit func(*Options)) *Server {
	t.Helper()
	o := DefaultOptions()
	o.Listen = "127.0.0.1:0"
	bt, err := ParseBuildtab(strings.NewReader(testBuildtab), "buildtab")
	if err != nil {
		t.Fatal(err)
	}
	o.Buildtab = bt
	o.ExpireInterval = 50 * time.Millisecond
	if edit != nil {
		edit(&o)
	}
	s, err := New(st, o, testLog(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Listen(); err != nil {
		t.Fatalf("Listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := s.Serve(ctx); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return s
}

// helloTemplate is examples/hello's task manifest.
func helloTemplate(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "examples", "hello", "task.manifest"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// submitHello uploads examples/hello packed and submits it for configs,
// with edit changing the request first.
func submitHello(t *testing.T, s *Server, edit func(*SubmitRequest)) *Submission {
	t.Helper()
	ctx := context.Background()
	c, err := NewAPIClient(s.URL(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := archive.Pack(&buf, filepath.Join("..", "..", "examples", "hello"), nil); err != nil {
		t.Fatal(err)
	}
	a, err := c.PutArchive(ctx, buf.Bytes())
	if err != nil {
		t.Fatalf("PutArchive: %v", err)
	}
	req := &SubmitRequest{Archive: a.SHA256, Template: helloTemplate(t), Configs: []string{"bb"}}
	if edit != nil {
		edit(req)
	}
	sub, err := c.Submit(ctx, req)
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	return sub
}

// agentReq is a task request of agent "a1" with toolchain buildfarm 1.0.0
// offering machines.
func agentReq(fp string, machines ...string) *manifest.TaskRequest {
	r := &manifest.TaskRequest{Agent: "a1", ToolchainName: "buildfarm", ToolchainVersion: "1.0.0", Fingerprint: fp}
	for _, m := range machines {
		r.Machines = append(r.Machines, manifest.MachineHeader{ID: m + "-1.0", Name: m, Summary: m + " machine"})
	}
	return r
}

// post POSTs a manifest stream (or raw bytes) and returns the status and
// body.
func post(t *testing.T, url string, body any, header http.Header) (int, []byte) {
	t.Helper()
	var b bytes.Buffer
	switch v := body.(type) {
	case []manifest.Manifest:
		if err := manifest.Serialize(&b, v); err != nil {
			t.Fatal(err)
		}
	case []byte:
		b.Write(v)
	}
	req, err := http.NewRequest(http.MethodPost, url, &b)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "text/manifest")
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, data
}

// askTask sends a task request to url and parses the task response.
func askTask(t *testing.T, url string, req *manifest.TaskRequest, header http.Header) *manifest.TaskResponse {
	t.Helper()
	code, body := post(t, url, req.Manifests(), header)
	if code != http.StatusOK {
		t.Fatalf("task request: %d %s", code, body)
	}
	ms, err := manifest.Parse(bytes.NewReader(body), "task response")
	if err != nil {
		t.Fatalf("task response %q: %v", body, err)
	}
	resp, err := manifest.ParseTaskResponse(ms.Manifests(), "task response", manifest.Strict)
	if err != nil {
		t.Fatalf("task response %q: %v", body, err)
	}
	return resp
}

// resultFor is a result request of status for the task of resp, with
// signature sig.
func resultFor(resp *manifest.TaskResponse, status manifest.Status, sig string) []manifest.Manifest {
	rr := &manifest.ResultRequest{Session: resp.Session, Challenge: sig, Result: manifest.Result{
		Name: resp.Task.Name, Version: resp.Task.Version, Status: status,
		Results: []manifest.OperationResult{{Operation: "configure", Status: status, Log: "configured\n"}},
	}}
	return rr.Manifests()
}

func newEd25519(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// taskState returns a task's state and status from the store.
func taskOf(t *testing.T, st store.Store, id int64) *store.Task {
	t.Helper()
	tk, err := st.Task(context.Background(), id)
	if err != nil {
		t.Fatalf("Task(%d): %v", id, err)
	}
	return tk
}

func isNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }

// gzipped returns s gzip-compressed.
func gzipped(t *testing.T, s string) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write([]byte(s))
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}
