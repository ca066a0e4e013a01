package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/auth"
	"github.com/buildfarm/buildfarm/internal/ctlclient"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/testenv"
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
	arrived      chan struct{} // closed and replaced by give
	waitHeaders  []string
	gotResult    chan *manifest.ResultRequest
	// holdArchive, when set, holds archive downloads until the
	// request ends, and receives each one as it arrives.
	holdArchive chan string
}

func newTestController(t *testing.T) *testController {
	c := &testController{gotResult: make(chan *manifest.ResultRequest, 100), archives: map[string][]byte{}, arrived: make(chan struct{})}
	c.srv = httptest.NewServer(c)
	t.Cleanup(c.srv.Close)
	return c
}

func (c *testController) url() string { return c.srv.URL + "/task" }

func (c *testController) give(task *manifest.Task) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.queue = append(c.queue, task)
	close(c.arrived)
	c.arrived = make(chan struct{})
}

func (c *testController) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/archive/") {
		if c.holdArchive != nil {
			c.holdArchive <- r.URL.Path
			<-r.Context().Done()
			return
		}
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
		req, err := manifest.ParseTaskRequest(ms.Manifests(), "task request", manifest.Strict)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		c.mu.Lock()
		c.requests = append(c.requests, req)
		c.inFlight++
		c.maxInFlight = max(c.maxInFlight, c.inFlight)
		c.waitHeaders = append(c.waitHeaders, r.Header.Get(ctlclient.WaitHeader))
		hold, arrived := c.hold, c.arrived
		c.mu.Unlock()
		resp := c.next(r, req)
		if resp.Session == "" && hold > 0 && r.Header.Get(ctlclient.WaitHeader) != "" {
			select {
			case <-arrived:
			case <-time.After(hold):
			case <-r.Context().Done():
			}
			resp = c.next(r, req)
		}
		c.mu.Lock()
		c.inFlight--
		c.mu.Unlock()
		manifest.Serialize(w, resp.Manifests())
	case "/result":
		rr, err := manifest.ParseResultRequest(ms.Manifests(), "result request", manifest.Strict)
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

// next pops the next task response, if the request offers its machine, as
// a controller does; a task for debian is handed out to anyone, to test the
// agent's answer to a task for a machine it does not have.
func (c *testController) next(r *http.Request, req *manifest.TaskRequest) *manifest.TaskResponse {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.queue) == 0 || !slices.ContainsFunc(req.Machines, func(m manifest.MachineHeader) bool {
		return m.Name == c.queue[0].Machine || c.queue[0].Machine == "debian"
	}) {
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
	o.Registry, o.ConsoleLinks = filepath.Join(dir, "vms"), filepath.Join(dir, "console")
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

// TestRSASignatureAsBbot: with an RSA key the agent signs the challenge as
// bbot does (openssl rsautl -sign: PKCS#1 v1.5 over the challenge's bytes,
// no digest), which openssl itself verifies.
func TestRSASignatureAsBbot(t *testing.T) {
	dir := t.TempDir()
	keyFile, pubFile := testenv.RSAKeyPair(t, dir)
	c := newTestController(t)
	c.challenge = bytes.Repeat([]byte{0x5a, 0xa5}, 32)
	c.give(helloTask("busybox"))
	o := fakeOptions(t)
	o.AuthKey = keyFile
	runAgent(t, o, &logBuffer{}, c.url())
	rr := c.waitResult(t, 20*time.Second)
	sig, err := base64.StdEncoding.DecodeString(rr.Challenge)
	if err != nil {
		t.Fatalf("challenge signature %q: %v", rr.Challenge, err)
	}
	sigFile := filepath.Join(dir, "sig")
	os.WriteFile(sigFile, sig, 0o644)
	out, err := exec.Command(testenv.NeedProgram(t, "openssl"), "rsautl", "-verify", "-pubin", "-inkey", pubFile, "-in", sigFile).Output()
	if err != nil || !bytes.Equal(out, c.challenge) {
		t.Errorf("openssl rsautl -verify of the agent's signature: %v, recovered %x; want the challenge %x", err, out, c.challenge)
	}
}

// TestTaskChecks: a task the agent cannot build is answered with an error
// result that says why, at once and without a build: no steps at all, a
// build2 package build, an archive without a URL, an archive whose sum is
// wrong or that is missing. A good archive is downloaded and checked.
func TestTaskChecks(t *testing.T) {
	c := newTestController(t)
	archive := []byte("the sources")
	c.archives["hello.tar.gz"] = archive
	sum := sha256.Sum256(archive)
	good := hex.EncodeToString(sum[:])
	task := func(edit func(*manifest.Task)) *manifest.Task {
		tk := helloTask("busybox")
		edit(tk)
		return tk
	}
	withArchive := func(url, sum string) func(*manifest.Task) {
		return func(tk *manifest.Task) { tk.Archive, tk.ArchiveURL, tk.ArchiveSHA256 = "hello.tar.gz", url, sum }
	}
	for _, tc := range []struct {
		name   string
		task   *manifest.Task
		status manifest.Status
		log    string
	}{
		{"no steps", task(func(tk *manifest.Task) { tk.Steps = nil }), manifest.StatusError, "no steps were given"},
		{"build2", task(func(tk *manifest.Task) {
			tk.Steps, tk.PackageConfig, tk.Requires = nil, "config.x=1", []string{"libfoo"}
		}),
			manifest.StatusError, "unsupported: task hello 1.0.0 is a build2 package build (requires, package-config)"},
		{"archive without url", task(withArchive("", "")), manifest.StatusError, "without buildfarm-archive-url"},
		{"archive without sum", task(withArchive(c.srv.URL+"/archive/hello.tar.gz", "")), manifest.StatusError, "without buildfarm-archive-sha256"},
		{"wrong sum", task(withArchive(c.srv.URL+"/archive/hello.tar.gz", strings.Repeat("0", 64))), manifest.StatusError, "SHA-256 mismatch"},
		{"missing archive", task(withArchive(c.srv.URL+"/archive/nothing.tar.gz", good)), manifest.StatusError, "404 Not Found"},
		{"other machine", task(func(tk *manifest.Task) { tk.Machine = "debian" }), manifest.StatusError, `no machine "debian" here (have: busybox)`},
		{"good archive", task(withArchive(c.srv.URL+"/archive/hello.tar.gz", good)), manifest.StatusAbort, "fake build"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.give(tc.task)
			o := fakeOptions(t)
			var log logBuffer
			stop := runAgent(t, o, &log, c.url())
			rr := c.waitResult(t, 20*time.Second)
			stop()
			if rr.Result.Status != tc.status || len(rr.Result.Results) == 0 || !strings.Contains(rr.Result.Results[0].Log, tc.log) {
				t.Errorf("result %v %+v; want %v with %q in the log", rr.Result.Status, rr.Result.Results, tc.status, tc.log)
			}
		})
	}
}

// TestSourcesPlaced: the archive a controller's task names is downloaded,
// checked and placed in the VM's get/ beside the task manifest.
func TestSourcesPlaced(t *testing.T) {
	c := newTestController(t)
	archive := []byte("the sources")
	c.archives["hello.tar.gz"] = archive
	sum := sha256.Sum256(archive)
	tk := helloTask("busybox")
	tk.Archive, tk.ArchiveURL, tk.ArchiveSHA256 = "hello.tar.gz", c.srv.URL+"/archive/hello.tar.gz", hex.EncodeToString(sum[:])
	a, err := New(fakeOptions(t), nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	src, cleanup, err := a.sources(context.Background(), 0, tk, "")
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	get := t.TempDir()
	if err := placeArchive(get, tk, src.file); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(get, "hello.tar.gz")); err != nil || !bytes.Equal(b, archive) {
		t.Errorf("get/hello.tar.gz = %q, %v; want the archive", b, err)
	}
	if _, _, err := ReadTaskFile(filepath.Join(get, "task.manifest")); err != nil {
		t.Errorf("get/task.manifest: %v", err)
	}
	cleanup()
	if _, err := os.Stat(src.file); !os.IsNotExist(err) {
		t.Errorf("downloaded archive %s left after the clean-up", src.file)
	}
}

// TestChallengeWithoutKey: a task with a challenge given to an agent
// without --auth-key is refused at once with a clear log line, and not
// built; no result is sent.
func TestChallengeWithoutKey(t *testing.T) {
	c := newTestController(t)
	c.challenge = []byte("prove it")
	c.give(helloTask("busybox"))
	var log logBuffer
	stop := runAgent(t, fakeOptions(t), &log, c.url())
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(log.String(), "task refused") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	stop()
	l := log.String()
	if !strings.Contains(l, "without --auth-key the agent cannot sign it") {
		t.Errorf("no log line says the task was refused for want of --auth-key")
	}
	if strings.Contains(l, "task done") {
		t.Errorf("the task was built although it was refused")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.uploads != 0 {
		t.Errorf("%d result uploads, want none", c.uploads)
	}
}

// TestResultRetried: result uploads that fail with 500 are retried from
// the spool with back-off until the controller takes the result; one
// refused for good (409: the session is unknown) is dropped with an error.
func TestResultRetried(t *testing.T) {
	c := newTestController(t)
	c.failResults = 3
	c.give(helloTask("busybox"))
	o := fakeOptions(t)
	var log logBuffer
	stop := runAgent(t, o, &log, c.url())
	rr := c.waitResult(t, 30*time.Second)
	if rr.Session != "s1" {
		t.Errorf("result of session %q, want s1", rr.Session)
	}
	c.mu.Lock()
	if c.uploads != 4 {
		t.Errorf("%d uploads, want 3 failed and 1 taken", c.uploads)
	}
	c.failResults, c.resultStatus = 1, http.StatusConflict
	c.mu.Unlock()
	c.give(helloTask("busybox"))
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(log.String(), "result dropped") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	if !strings.Contains(log.String(), "result dropped") {
		t.Errorf("a result refused with 409 was not dropped")
	}
	if files, _ := filepath.Glob(filepath.Join(o.spoolDir(), "*")); len(files) != 0 {
		t.Errorf("spool holds %v, want nothing", files)
	}
}

// TestSpoolAcrossRestart: a result that could not be delivered is in the
// spool when the agent stops, and the next agent delivers it first.
func TestSpoolAcrossRestart(t *testing.T) {
	c := newTestController(t)
	c.failResults = 1 << 30
	c.give(helloTask("busybox"))
	o := fakeOptions(t)
	var log logBuffer
	stop := runAgent(t, o, &log, c.url())
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(log.String(), "result upload failed") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(o.spoolDir(), "*.result"))
	if len(files) != 1 {
		t.Fatalf("spool after the stop: %v, want one result", files)
	}
	c.mu.Lock()
	c.failResults = 0
	c.mu.Unlock()
	var log2 logBuffer
	runAgent(t, o, &log2, c.url())
	rr := c.waitResult(t, 20*time.Second)
	if rr.Session != "s1" || rr.Result.Name != "hello" {
		t.Errorf("delivered after the restart: session %q, %s; want s1, hello", rr.Session, rr.Result.Name)
	}
	deadline = time.Now().Add(5 * time.Second)
	for len(files) > 0 && time.Now().Before(deadline) {
		files, _ = filepath.Glob(filepath.Join(o.spoolDir(), "*.result"))
		time.Sleep(20 * time.Millisecond)
	}
	if len(files) != 0 {
		t.Errorf("spool after delivery: %v, want nothing", files)
	}
}

// TestBadControllersSkipped: controllers that trickle their answer, send
// an endless body, answer garbage or fail are logged and skipped within
// --request-timeout each, and the task of a good one after them is built.
func TestBadControllersSkipped(t *testing.T) {
	bad := map[string]http.HandlerFunc{
		"trickle": func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			for r.Context().Err() == nil {
				if _, err := w.Write([]byte("#")); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				time.Sleep(50 * time.Millisecond)
			}
		},
		"endless": func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			chunk := bytes.Repeat([]byte("# endless\n"), 10000)
			for r.Context().Err() == nil {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		},
		"garbage": func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "<html>hello</html>") },
		"failing": func(w http.ResponseWriter, r *http.Request) { http.Error(w, "down", http.StatusServiceUnavailable) },
	}
	var urls []string
	for _, name := range []string{"trickle", "endless", "garbage", "failing"} {
		srv := httptest.NewServer(bad[name])
		t.Cleanup(srv.Close)
		urls = append(urls, srv.URL)
	}
	c := newTestController(t)
	c.give(helloTask("busybox"))
	o := fakeOptions(t)
	o.RequestTimeout = time.Second
	start := time.Now()
	var log logBuffer
	runAgent(t, o, &log, append(urls, c.url())...)
	c.waitResult(t, 20*time.Second)
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the good controller's task took %v, want the bad ones skipped within about a second each", took)
	}
	if n := strings.Count(log.String(), "controller skipped"); n < 4 {
		t.Errorf("%d controllers logged as skipped, want the 4 bad ones", n)
	}
}

func TestBackoff(t *testing.T) {
	b := newBackoff(8 * time.Second)
	var steps []time.Duration
	for range 6 {
		d := b.Next()
		if d < b.cur/2 || d > b.cur {
			t.Errorf("Next = %v with step %v, want between half the step and the step", d, b.cur)
		}
		steps = append(steps, b.cur)
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second, 8 * time.Second}
	if fmt.Sprint(steps) != fmt.Sprint(want) {
		t.Errorf("steps %v, want %v", steps, want)
	}
	b.Reset()
	if d := b.Next(); d > time.Second {
		t.Errorf("Next after Reset = %v, want at most 1s", d)
	}
	if b := newBackoff(100 * time.Millisecond); b.min != 100*time.Millisecond {
		t.Errorf("backoff capped at 100ms starts at %v, want 100ms", b.min)
	}
}

// TestLongPoll: the agent asks with the long-poll header, and a task that
// arrives while the controller holds the request is performed at once.
func TestLongPoll(t *testing.T) {
	c := newTestController(t)
	c.hold = 20 * time.Second
	o := fakeOptions(t)
	o.LongPoll = 20 * time.Second
	runAgent(t, o, &logBuffer{}, c.url())
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		n := c.inFlight
		c.mu.Unlock()
		if n > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	c.give(helloTask("busybox"))
	c.waitResult(t, 30*time.Second)
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("task given during a held request took %v to its result, want well under 2 s", took)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.requests) != 1 || c.waitHeaders[0] != "20" {
		t.Errorf("%d task requests with %s %q; want one, held, with 20", len(c.requests), ctlclient.WaitHeader, c.waitHeaders)
	}
}

// TestOnceDeliversResult: with --once, Run returns after one task only
// once its result is delivered, through failed uploads.
func TestOnceDeliversResult(t *testing.T) {
	c := newTestController(t)
	c.failResults = 2
	c.give(helloTask("busybox"))
	o := fakeOptions(t)
	o.Once = true
	var log logBuffer
	a, err := New(o, slog.New(slog.NewTextHandler(&log, nil)), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Run(ctx, []string{c.url()}); err != nil || ctx.Err() != nil {
		t.Fatalf("Run with --once = %v (context: %v), want nil before the deadline", err, ctx.Err())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.results) != 1 || c.uploads != 3 {
		t.Errorf("%d results taken in %d uploads when Run returned, want 1 in 3\n%s", len(c.results), c.uploads, log.String())
	}
}

// TestStopReportsInterrupt is issue 13's "agent stop: interrupt": an agent
// stopped (SIGTERM: its context ends) during a task reports the task
// interrupted to its controller at once, which then gives it again,
// rather than after the lease.
func TestStopReportsInterrupt(t *testing.T) {
	c := newTestController(t)
	c.holdArchive = make(chan string, 1)
	task := helloTask("busybox")
	task.Archive, task.ArchiveURL = "hello.tar.gz", c.srv.URL+"/archive/hello.tar.gz"
	task.ArchiveSHA256 = strings.Repeat("0", 64)
	c.give(task)
	var log logBuffer
	stop := runAgent(t, fakeOptions(t), &log, c.url())
	select {
	case <-c.holdArchive: // the task is under way: its sources are downloading
	case <-time.After(30 * time.Second):
		t.Fatal("the agent did not start the task")
	}
	start := time.Now()
	if err := stop(); err != nil {
		t.Errorf("Run = %v, want nil after a stop", err)
	}
	rr := c.waitResult(t, 2*time.Second) // delivered before Run returned
	if rr.Session != "s1" || rr.Result.Status != manifest.StatusInterrupt || rr.Result.Name != task.Name {
		t.Errorf("result %s %s %v, want s1's task interrupted", rr.Session, rr.Result.Name, rr.Result.Status)
	}
	if took := time.Since(start); took > interruptReport+5*time.Second {
		t.Errorf("the stop took %v", took)
	}
}
