package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/auth"
	"github.com/buildfarm/buildfarm/internal/ctlclient"
	"github.com/buildfarm/buildfarm/internal/manifest"
)

// testController is a controller speaking bbot's protocol over HTTP for
// the agent's tests: it hands out the tasks queued with give (with a
// challenge when one is set), records task requests and results, and
// fails the first failResults result uploads with resultStatus (500 if 0).
type testController struct {
	mu           sync.Mutex
	srv          *httptest.Server
	queue        []*manifest.Task
	challenge    []byte
	requests     []*manifest.TaskRequest
	results      []*manifest.ResultRequest
	failResults  int
	resultStatus int
	uploads      int // result uploads, failed or not
	session      int
	archives     map[string][]byte
	inFlight     int // task requests being held
	maxInFlight  int
	hold         time.Duration // hold a task request without a task this long
	gotResult    chan *manifest.ResultRequest
}

func newTestController(t *testing.T) *testController {
	c := &testController{gotResult: make(chan *manifest.ResultRequest, 100), archives: map[string][]byte{}}
	c.srv = httptest.NewServer(c)
	t.Cleanup(c.srv.Close)
	return c
}

func (c *testController) url() string { return c.srv.URL + "/task" }

func (c *testController) give(task *manifest.Task) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.queue = append(c.queue, task)
}

func (c *testController) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/archive/") {
		c.mu.Lock()
		b, ok := c.archives[strings.TrimPrefix(r.URL.Path, "/archive/")]
		c.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
		return
	}
	body, _ := io.ReadAll(r.Body)
	ms, err := manifest.Parse(bytes.NewReader(body), r.URL.Path)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	switch r.URL.Path {
	case "/task":
		req, err := manifest.ParseTaskRequest(ms, "task request", manifest.Strict)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		c.mu.Lock()
		c.requests = append(c.requests, req)
		c.inFlight++
		c.maxInFlight = max(c.maxInFlight, c.inFlight)
		hold := c.hold
		c.mu.Unlock()
		resp := c.next(r)
		if resp.Session == "" && hold > 0 && r.Header.Get(ctlclient.WaitHeader) != "" {
			select {
			case <-time.After(hold):
			case <-r.Context().Done():
			}
			resp = c.next(r)
		}
		c.mu.Lock()
		c.inFlight--
		c.mu.Unlock()
		manifest.Serialize(w, resp.Manifests())
	case "/result":
		rr, err := manifest.ParseResultRequest(ms, "result request", manifest.Strict)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		c.mu.Lock()
		c.uploads++
		if c.failResults > 0 {
			c.failResults--
			status := c.resultStatus
			c.mu.Unlock()
			if status == 0 {
				status = http.StatusInternalServerError
			}
			http.Error(w, "not now", status)
			return
		}
		c.results = append(c.results, rr)
		c.mu.Unlock()
		c.gotResult <- rr
	default:
		http.NotFound(w, r)
	}
}

// next pops the next task response.
func (c *testController) next(r *http.Request) *manifest.TaskResponse {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.queue) == 0 {
		return &manifest.TaskResponse{}
	}
	task := c.queue[0]
	c.queue = c.queue[1:]
	c.session++
	resp := &manifest.TaskResponse{Session: fmt.Sprintf("s%d", c.session), ResultURL: "http://" + r.Host + "/result", Task: task}
	if c.challenge != nil {
		resp.Challenge = base64.StdEncoding.EncodeToString(c.challenge)
	}
	return resp
}

// waitResult waits for a result request.
func (c *testController) waitResult(t *testing.T, within time.Duration) *manifest.ResultRequest {
	t.Helper()
	select {
	case rr := <-c.gotResult:
		return rr
	case <-time.After(within):
		t.Fatalf("no result request arrived within %v", within)
		return nil
	}
}

func helloTask(machine string) *manifest.Task {
	return &manifest.Task{Name: "hello", Version: "1.0.0", RepositoryURL: "https://example.org/hello.git",
		Machine: machine, Target: "x86_64-linux-gnu", Steps: []manifest.Step{{Operation: "update", Command: "make"}}}
}

// logBuffer collects an agent's log for the test's checks.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// fakeOptions are options for an agent without VMs: one fake machine
// busybox (--fake-machine), --fake-build, no network namespaces, short
// pauses.
func fakeOptions(t *testing.T) Options {
	dir := t.TempDir()
	machines := filepath.Join(dir, "machines.manifest")
	os.WriteFile(machines, []byte(": 1\nid: m1\nname: busybox\nsummary: a busybox machine\n"), 0o644)
	o := DefaultOptions()
	o.Machines, o.TFTP = filepath.Join(dir, "none"), filepath.Join(dir, "tftp")
	o.FakeMachine, o.FakeBuild, o.NoNetNS = machines, true, true
	o.RequestInterval, o.RequestTimeout, o.LongPoll = 100*time.Millisecond, 2*time.Second, 0
	return o
}

// runAgent runs an agent with o against urls in the background; the
// returned stop cancels it and returns Run's error.
func runAgent(t *testing.T, o Options, log *logBuffer, urls ...string) (stop func() error) {
	t.Helper()
	a, err := New(o, slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, urls) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(30 * time.Second):
				runErr = fmt.Errorf("Run did not return within 30 s of its cancellation")
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("agent log:\n%s", log.String())
		}
	})
	return stop
}

func writeKey(t *testing.T, key any) string {
	t.Helper()
	b, err := auth.MarshalPrivateKey(key.(interface {
		Public() crypto.PublicKey
		Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error)
	}))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestControllerProtocol runs the agent against a controller speaking
// bbot's protocol over HTTP: a task request the controller's strict parser
// accepts (with the default toolchain version, the machine headers and the
// key's fingerprint), the task response, and the result request with the
// challenge signed by the agent's Ed25519 key. The build is faked.
func TestControllerProtocol(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c := newTestController(t)
	c.challenge = []byte("prove it")
	c.give(helloTask("busybox"))
	o := fakeOptions(t)
	o.AuthKey = writeKey(t, priv)
	var log logBuffer
	stop := runAgent(t, o, &log, c.url())
	rr := c.waitResult(t, 20*time.Second)
	// The agent asks again; then it stops cleanly on cancellation.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		n := len(c.requests)
		c.mu.Unlock()
		if n >= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Errorf("Run after cancellation = %v, want nil", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	req := c.requests[0]
	fp, _ := auth.Fingerprint(pub)
	if req.ToolchainName != "default" || req.ToolchainVersion != DefaultToolchainVersion || len(req.Machines) != 1 ||
		req.Machines[0].Name != "busybox" || req.Fingerprint != fp {
		t.Errorf("task request %+v: want toolchain default %s, the busybox machine and the key's fingerprint", req, DefaultToolchainVersion)
	}
	if len(c.requests) < 2 {
		t.Errorf("%d task requests, want the agent to ask again after its task", len(c.requests))
	}
	if rr.Session != "s1" || rr.Result.Name != "hello" || rr.Result.Status != manifest.StatusAbort {
		t.Errorf("result request session %q, result %s %v; want s1, hello, abort (fake build)", rr.Session, rr.Result.Name, rr.Result.Status)
	}
	if err := auth.Verify(pub, base64.StdEncoding.EncodeToString(c.challenge), rr.Challenge); err != nil {
		t.Errorf("challenge signature %q does not verify against the agent's key: %v", rr.Challenge, err)
	}
}
