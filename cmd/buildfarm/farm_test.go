package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/archive"
	"github.com/buildfarm/buildfarm/internal/controller"
	"github.com/buildfarm/buildfarm/internal/ctlclient"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/store"
	"github.com/buildfarm/buildfarm/internal/store/pgtest"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// TestFarm pushes 50 tasks through two `buildfarm controller` processes
// sharing one real PostgreSQL behind a load balancer, served by two
// `buildfarm agent` processes (--fake-build: no VMs, the protocol and the
// queue are what is tested), and SIGKILLs one controller halfway. Every
// task must end exactly once: all 50 done with the fake build's result,
// each performed by exactly one agent in exactly one session, the session
// the store kept. A claim that died with the killed controller (the test
// makes one, see below) shows as a second attempt after its lease ran out,
// never as a second build.
func TestFarm(t *testing.T) {
	testenv.NeedVM(t) // costly: a PostgreSQL server and six processes
	pg := pgtest.NewServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dsn, err := pg.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "buildfarm")
	if err := testenv.GoBuild(ctx, bin, "./cmd/buildfarm", ""); err != nil {
		t.Fatal(err)
	}
	const token = "farm-test-token"
	t.Setenv(tokenEnv, token) // the controllers' admin token (they have a public URL)

	// The load balancer first: the controllers give out its URL.
	lb := &balancer{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lbURL := "http://" + ln.Addr().String()
	lbSrv := &http.Server{Handler: lb}
	go lbSrv.Serve(ln)
	t.Cleanup(func() { lbSrv.Close() })

	// Two controllers on one database. A lease is 2 s + 2 s, so a claim
	// lost with a controller is given again within the test.
	var ctls []*farmProc
	for i := range 2 {
		c := startFarmProc(t, fmt.Sprintf("controller %d", i+1), bin, "controller", "--listen", "127.0.0.1:0", "--db", dsn,
			"--url", lbURL, "--build-timeout", "2s", "--lease-margin", "2s", "--long-poll", "10s")
		c.url = c.waitFor(t, regexp.MustCompile(`controller: listening on (http://\S+)`))
		lb.add(t, c.url)
		ctls = append(ctls, c)
	}

	// 50 submissions, through the controller that stays; the other is
	// killed after the 25th.
	api, err := controller.NewAPIClient(ctls[1].url, token, nil)
	if err != nil {
		t.Fatal(err)
	}
	var packed bytes.Buffer
	hello := filepath.Join("..", "..", "examples", "hello")
	if err := archive.Pack(&packed, hello, nil); err != nil {
		t.Fatal(err)
	}
	a, err := api.PutArchive(ctx, packed.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := os.ReadFile(filepath.Join(hello, "task.manifest"))
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	submit := func(i int) {
		t.Helper()
		if _, err := api.Submit(ctx, &controller.SubmitRequest{Name: fmt.Sprintf("t%02d", i), Archive: a.SHA256, Template: string(tmpl)}); err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
	}

	// A claim lost with controller 1: the window between a claim's
	// commit and its answer is too narrow to hit with a SIGKILL by
	// chance, so the first task is claimed through controller 1 before
	// any agent runs, by a request whose answer is dropped, as when the
	// controller dies in that window. The task must be given again once
	// its lease runs out, and built once.
	submit(1)
	lost, err := (&ctlclient.Client{HTTP: http.DefaultClient, Timeout: 10 * time.Second}).RequestTask(ctx, ctls[0].url,
		&manifest.TaskRequest{Agent: "lost", ToolchainName: "default", ToolchainVersion: "1.0.0",
			Machines: []manifest.MachineHeader{{ID: "busybox-1.0", Name: "busybox", Summary: "a busybox machine"}}}, 0)
	if err != nil || lost.Session == "" {
		t.Fatalf("the claim to lose: %+v, %v; want a task", lost, err)
	}

	// Two agents, two slots each: one through the load balancer, one
	// asking both controllers itself (the one to be killed second).
	machine := filepath.Join(dir, "machine.manifest")
	if err := os.WriteFile(machine, []byte(": 1\nid: busybox-1.0\nname: busybox\nsummary: a busybox machine\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var agents []*farmProc
	for i, urls := range [][]string{{lbURL}, {ctls[1].url, ctls[0].url}} {
		args := []string{"agent", "--instance", fmt.Sprint(i + 1), "--instances", "2",
			"--machines", filepath.Join(dir, "none"), "--tftp", filepath.Join(dir, fmt.Sprintf("tftp%d", i+1)),
			"--fake-machine", machine, "--fake-build", "--no-netns",
			"--request-interval", "1s", "--request-timeout", "5s", "--long-poll", "4s"}
		agents = append(agents, startFarmProc(t, fmt.Sprintf("agent %d", i+1), bin, append(args, urls...)...))
	}

	for i := 2; i <= n; i++ {
		if i == n/2+1 {
			t.Logf("SIGKILL controller 1 (pid %d) after %d submissions", ctls[0].cmd.Process.Pid, i-1)
			if err := ctls[0].cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
		submit(i)
		time.Sleep(40 * time.Millisecond)
	}

	// Every task done, in the store that both controllers shared.
	st, err := store.Open(ctx, dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var tasks []*store.Task
	for {
		tasks, err = st.Tasks(ctx, store.TaskFilter{Limit: 2 * n})
		if err != nil {
			t.Fatal(err)
		}
		done := 0
		for _, tk := range tasks {
			if tk.State == store.Done {
				done++
			}
		}
		if done == n {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("%d of %d tasks done before the deadline", done, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, a := range agents {
		a.stop(t)
	}

	// Each task performed once, in the session the store kept.
	if len(tasks) != n {
		t.Errorf("%d tasks in the store, want %d", len(tasks), n)
	}
	performed := map[string][]string{} // name: sessions performed in
	delivered := map[string]int{}      // session: results delivered
	taskRE := regexp.MustCompile(`msg=task .*session=(\S+) name=(\S+)`)
	deliveredRE := regexp.MustCompile(`msg="result delivered" .*session=(\S+)`)
	for _, a := range agents {
		log := a.log.String()
		for _, m := range taskRE.FindAllStringSubmatch(log, -1) {
			performed[m[2]] = append(performed[m[2]], m[1])
		}
		for _, m := range deliveredRE.FindAllStringSubmatch(log, -1) {
			delivered[m[1]]++
		}
		if strings.Contains(log, "result dropped") {
			t.Errorf("%s dropped a result:\n%s", a.name, log)
		}
	}
	retried := 0
	for _, tk := range tasks {
		if tk.State != store.Done || tk.Status != "abort" {
			t.Errorf("task %d %s: %s %s (%s), want done abort (the fake build's result)", tk.ID, tk.Name, tk.State, tk.Status, tk.Reason)
		}
		if got := performed[tk.Name]; len(got) != 1 || got[0] != tk.Session {
			t.Errorf("task %d %s performed in sessions %v, want once, in its stored session %s", tk.ID, tk.Name, got, tk.Session)
		}
		if delivered[tk.Session] != 1 {
			t.Errorf("task %d %s: its result delivered %d times, want once", tk.ID, tk.Name, delivered[tk.Session])
		}
		if _, err := st.Result(ctx, tk.ID); err != nil {
			t.Errorf("task %d %s: result: %v", tk.ID, tk.Name, err)
		}
		if tk.Attempts > 1 {
			retried++ // a claim lost with the killed controller, given again after its lease
		}
		if tk.Name == "t01" && (tk.Attempts != 2 || tk.Session == lost.Session) {
			t.Errorf("task %d %s, whose first claim was lost: %d attempts, last session %s; want 2 attempts, the last not the lost %s",
				tk.ID, tk.Name, tk.Attempts, tk.Session, lost.Session)
		}
	}
	t.Logf("%d tasks, %d of them given again after a claim was lost with controller 1", len(tasks), retried)
	if t.Failed() {
		for _, p := range append(ctls, agents...) {
			t.Logf("%s:\n%s", p.name, p.log.String())
		}
	}
}

// balancer is the test's load balancer: round-robin over the controllers,
// a request that cannot reach one sent to the next.
type balancer struct {
	mu       sync.Mutex
	backends []*httputil.ReverseProxy
	next     atomic.Uint64
}

type failedKey struct{}

func (b *balancer) add(t *testing.T, backend string) {
	u, err := url.Parse(backend)
	if err != nil {
		t.Fatal(err)
	}
	p := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(u); r.Out.Host = r.In.Host },
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			*r.Context().Value(failedKey{}).(*error) = err
		},
	}
	b.mu.Lock()
	b.backends = append(b.backends, p)
	b.mu.Unlock()
}

func (b *balancer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 32<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	b.mu.Lock()
	backends := b.backends
	b.mu.Unlock()
	start := int(b.next.Add(1))
	var errs []error
	for i := range backends {
		var failed error
		out := r.Clone(context.WithValue(r.Context(), failedKey{}, &failed))
		out.Body, out.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		backends[(start+i)%len(backends)].ServeHTTP(w, out)
		if failed == nil {
			return
		}
		errs = append(errs, failed)
		if r.Context().Err() != nil {
			return
		}
	}
	http.Error(w, "no controller answered: "+errors.Join(errs...).Error(), http.StatusBadGateway)
}

// farmProc is a buildfarm process of the test, with its standard error.
type farmProc struct {
	name string
	cmd  *exec.Cmd
	url  string
	log  syncBuffer
	done chan struct{}
}

// startFarmProc starts bin with args, stopped (SIGTERM, then SIGKILL) when
// the test ends.
func startFarmProc(t *testing.T, name, bin string, args ...string) *farmProc {
	t.Helper()
	p := &farmProc{name: name, done: make(chan struct{})}
	p.cmd = proc.Command(context.Background(), bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = &p.log, &p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// waitFor waits for a line of the process's standard error that re
// matches and returns re's first group.
func (p *farmProc) waitFor(t *testing.T, re *regexp.Regexp) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if m := re.FindStringSubmatch(p.log.String()); m != nil {
			return m[1]
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited: %v\n%s", p.name, p.cmd.ProcessState, p.log.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("%s: no line matching %q within 30 s:\n%s", p.name, re, p.log.String())
	return ""
}

// stop ends the process: SIGTERM, and SIGKILL after 10 s.
func (p *farmProc) stop(t *testing.T) {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Errorf("%s (pid %d) still running 10 s after SIGTERM; killed", p.name, p.cmd.Process.Pid)
		p.cmd.Process.Kill()
		<-p.done
	}
}
