package ctlclient

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/manifest"
)

func request() *manifest.TaskRequest {
	return &manifest.TaskRequest{Agent: "host-1", ToolchainName: "default", ToolchainVersion: "0.1.0",
		Machines: []manifest.MachineHeader{{ID: "m1", Name: "busybox", Summary: "busybox"}}}
}

func client(timeout time.Duration) *Client {
	return &Client{HTTP: &http.Client{}, Timeout: timeout}
}

// TestRequestTask: the request is the task request stream as text/manifest
// with the long-poll header, and the answer is parsed.
func TestRequestTask(t *testing.T) {
	var gotWait, gotType string
	var got *manifest.TaskRequest
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotWait, gotType = r.Header.Get(WaitHeader), r.Header.Get("Content-Type")
		ms, err := manifest.Parse(r.Body, "request")
		if err == nil {
			got, err = manifest.ParseTaskRequest(ms.Manifests(), "request", manifest.Strict)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		resp := &manifest.TaskResponse{Session: "s1", ResultURL: "http://" + r.Host + "/result",
			Task: &manifest.Task{Name: "hello", Version: "1.0.0", RepositoryURL: "https://example.org/hello.git", Machine: "busybox", Target: "x86_64-linux-gnu"}}
		manifest.Serialize(w, resp.Manifests())
	}))
	defer srv.Close()
	resp, err := client(5*time.Second).RequestTask(context.Background(), srv.URL+"/task", request(), 7*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Session != "s1" || resp.Task == nil || resp.Task.Name != "hello" {
		t.Errorf("RequestTask = %+v, want session s1 with task hello", resp)
	}
	if gotWait != "7" || gotType != "text/manifest" || got == nil || got.Agent != "host-1" {
		t.Errorf("request: %s %q, Content-Type %q, %+v; want 7, text/manifest and the task request", WaitHeader, gotWait, gotType, got)
	}
	// No wait: no header.
	if _, err := client(5*time.Second).RequestTask(context.Background(), srv.URL, request(), 0); err != nil || gotWait != "" {
		t.Errorf("RequestTask without wait: %v, header %q; want no header", err, gotWait)
	}
}

// TestBadControllers: a controller that answers garbage, an error status,
// an endless body, trickles its answer or never answers costs an error
// within the timeout, not a hang and not unbounded memory.
func TestBadControllers(t *testing.T) {
	endless := func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		chunk := bytes.Repeat([]byte("x: y\n"), 4096)
		for r.Context().Err() == nil {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}
	trickle := func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Write([]byte(": 1\n"))
		for r.Context().Err() == nil {
			if _, err := w.Write([]byte("#")); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			time.Sleep(50 * time.Millisecond)
		}
	}
	silent := func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // so that the server notices the client leave
		select {
		case <-r.Context().Done():
		case <-time.After(20 * time.Second):
		}
	}
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		want    error
		status  int
	}{
		{"garbage", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "<html>not a manifest</html>\n") }, ErrGarbled, 0},
		{"wrong manifest", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, ": 1\nagent: x\n") }, ErrGarbled, 0},
		{"500", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "database down", 500) }, nil, 500},
		{"endless body", endless, ErrTooLarge, 0},
		{"trickle", trickle, context.DeadlineExceeded, 0},
		{"silent", silent, context.DeadlineExceeded, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.handler)
			defer srv.Close()
			start := time.Now()
			c := client(time.Second)
			c.MaxAnswer = 1 << 20
			_, err := c.RequestTask(context.Background(), srv.URL, request(), 0)
			took := time.Since(start)
			if took > 10*time.Second {
				t.Errorf("RequestTask took %v, want it bounded by the 1 s timeout", took)
			}
			var se *StatusError
			switch {
			case err == nil:
				t.Fatalf("RequestTask = nil error, want one")
			case tc.status != 0:
				if !errors.As(err, &se) || se.Code != tc.status || !strings.Contains(err.Error(), "database down") {
					t.Errorf("RequestTask = %v, want status %d with the message", err, tc.status)
				}
			case !errors.Is(err, tc.want):
				t.Errorf("RequestTask = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestLongPollExtendsTimeout: a controller that holds the request for
// the wait asked answers within the timeout plus the wait.
func TestLongPollExtendsTimeout(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(1500 * time.Millisecond)
		manifest.Serialize(w, (&manifest.TaskResponse{}).Manifests())
	}))
	defer srv.Close()
	resp, err := client(time.Second).RequestTask(context.Background(), srv.URL, request(), 2*time.Second)
	if err != nil || resp.Session != "" {
		t.Errorf("RequestTask held 1.5 s with a 2 s wait = %+v, %v; want no task, no error", resp, err)
	}
}

func TestPermanent(t *testing.T) {
	for code, want := range map[int]bool{400: true, 404: true, 409: true, 410: true, 413: true, 408: false, 429: false, 500: false, 502: false, 503: false} {
		err := error(&StatusError{Code: code})
		if got := Permanent(err); got != want {
			t.Errorf("Permanent(%d) = %v, want %v", code, got, want)
		}
	}
	if Permanent(context.DeadlineExceeded) || Permanent(ErrGarbled) {
		t.Errorf("Permanent of a network error or garbage = true, want false")
	}
}

func TestFetchArchive(t *testing.T) {
	data := bytes.Repeat([]byte("sources "), 1000)
	sum := sha256.Sum256(data)
	good := hex.EncodeToString(sum[:])
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/missing" {
			http.NotFound(w, r)
			return
		}
		if r.URL.Path == "/endless" {
			for r.Context().Err() == nil {
				if _, err := w.Write(data); err != nil {
					return
				}
			}
			return
		}
		w.Write(data)
	}))
	defer srv.Close()
	c := client(5 * time.Second)
	var b bytes.Buffer
	if err := c.FetchArchive(context.Background(), srv.URL+"/a.tar.gz", good, 1<<20, &b); err != nil || !bytes.Equal(b.Bytes(), data) {
		t.Errorf("FetchArchive = %v with %d bytes, want the %d bytes", err, b.Len(), len(data))
	}
	bad := strings.Repeat("0", 64)
	for _, tc := range []struct {
		path, sum string
		max       int64
		want      error
	}{
		{"/a.tar.gz", bad, 1 << 20, ErrChecksum},
		{"/a.tar.gz", good, 100, ErrTooLarge},
		{"/endless", good, 1 << 20, ErrTooLarge},
	} {
		if err := c.FetchArchive(context.Background(), srv.URL+tc.path, tc.sum, tc.max, io.Discard); !errors.Is(err, tc.want) {
			t.Errorf("FetchArchive(%s, max %d) = %v, want %v", tc.path, tc.max, err, tc.want)
		}
	}
	var se *StatusError
	if err := c.FetchArchive(context.Background(), srv.URL+"/missing", good, 1<<20, io.Discard); !errors.As(err, &se) || se.Code != 404 {
		t.Errorf("FetchArchive of a missing archive = %v, want a 404 StatusError", err)
	}
}

func TestNewHTTPClientCA(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		manifest.Serialize(w, (&manifest.TaskResponse{}).Manifests())
	}))
	defer srv.Close()
	// Without the server's CA: refused.
	hc, err := NewHTTPClient("")
	if err != nil {
		t.Fatal(err)
	}
	c := &Client{HTTP: hc, Timeout: 5 * time.Second}
	if _, err := c.RequestTask(context.Background(), srv.URL, request(), 0); err == nil {
		t.Errorf("RequestTask to a server with an unknown CA = nil error, want a certificate error")
	}
	// With it: accepted.
	ca := t.TempDir() + "/ca.pem"
	if err := writePEM(ca, srv.Certificate().Raw); err != nil {
		t.Fatal(err)
	}
	if c.HTTP, err = NewHTTPClient(ca); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RequestTask(context.Background(), srv.URL, request(), 0); err != nil {
		t.Errorf("RequestTask with --ca: %v", err)
	}
	if _, err := NewHTTPClient(t.TempDir() + "/none.pem"); err == nil {
		t.Errorf("NewHTTPClient of a missing CA file = nil error")
	}
}

func writePEM(path string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// TestHostileAnswerBounded: a task response of many tiny manifests or
// pairs, within the byte cap, is refused at the task response's limits,
// naming the limit, and what the client allocates for it stays within 4
// times the answer (a Stream of its text, never the manifests built
// from it).
func TestHostileAnswerBounded(t *testing.T) {
	for _, tc := range []struct {
		name, body, want string
	}{
		{"manifests", ": 1\nsession: s\n" + strings.Repeat(":\n", 500_000), "manifests"},
		{"pairs", ": 1\nsession: s\n" + strings.Repeat("a:\n", 500_000), "pairs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				io.WriteString(w, tc.body)
			}))
			defer srv.Close()
			c := client(10 * time.Second)
			var err error
			// Allocated bytes, as testing.AllocsPerRun counts allocations.
			alloc := func() uint64 {
				var m runtime.MemStats
				runtime.ReadMemStats(&m)
				return m.TotalAlloc
			}
			before := alloc()
			_, err = c.RequestTask(context.Background(), srv.URL, request(), 0)
			took := alloc() - before
			if !errors.Is(err, ErrGarbled) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("RequestTask = %v, want %v naming its %s limit", err, ErrGarbled, tc.want)
			}
			// The answer read (once, into the cap's buffer), its Stream, and
			// the HTTP exchange's own.
			if limit := 4*uint64(len(tc.body)) + 1<<20; took > limit {
				t.Errorf("RequestTask allocated %d bytes for a %d-byte answer, want at most %d", took, len(tc.body), limit)
			}
		})
	}
}
