package controller

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/store"
)

// TestProtocolRoundTrip gives a submitted task to an agent, serves its
// archive, stores its result and shows it through the API.
func TestProtocolRoundTrip(t *testing.T) {
	st := openStore(t, "")
	s := startServer(t, st, nil)
	sub := submitHello(t, s, nil)
	if len(sub.Tasks) != 1 || sub.Tasks[0].Config != "bb" || sub.Tasks[0].State != "queued" {
		t.Fatalf("submission tasks = %+v, want one queued task of bb", sub.Tasks)
	}
	// brep's form of the URL, as a bbot agent is given it.
	resp := askTask(t, s.URL()+"/?build-task", agentReq("", "debian-12", "busybox"), nil)
	if resp.Session == "" || resp.Task == nil {
		t.Fatalf("task response = %+v, want a task", resp)
	}
	if len(resp.Session) < 32 {
		t.Errorf("session %q: shorter than 128 bits in hex", resp.Session)
	}
	if resp.Challenge != "" {
		t.Errorf("challenge %q with no keys registered", resp.Challenge)
	}
	task := resp.Task
	if task.Machine != "busybox" || task.Target != "x86_64-linux-gnu" || task.Name != "hello" || task.Version != "1.0.0" {
		t.Errorf("task = %s %s on %s for %s, want hello 1.0.0 on busybox for x86_64-linux-gnu", task.Name, task.Version, task.Machine, task.Target)
	}
	if len(task.Steps) != 4 || task.Archive != "hello.tar.gz" {
		t.Errorf("task steps %v, archive %q: want the template's four steps and hello.tar.gz", task.Steps, task.Archive)
	}
	if resp.ResultURL != s.URL()+"/result" {
		t.Errorf("result URL %q, want %q", resp.ResultURL, s.URL()+"/result")
	}
	// The archive the task names is served, and its sum is right.
	if task.ArchiveURL != s.URL()+"/archives/"+task.ArchiveSHA256 {
		t.Errorf("archive URL %q, want %s/archives/%s", task.ArchiveURL, s.URL(), task.ArchiveSHA256)
	}
	ar, err := http.Get(task.ArchiveURL)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(ar.Body)
	ar.Body.Close()
	sum := sha256.Sum256(data)
	if ar.StatusCode != 200 || hex.EncodeToString(sum[:]) != task.ArchiveSHA256 || sub.Archive != task.ArchiveSHA256 {
		t.Errorf("GET %s: %d, sum %x, want 200 and %s", task.ArchiveURL, ar.StatusCode, sum, task.ArchiveSHA256)
	}
	// Running, with the machine and agent, in the API.
	c, _ := NewAPIClient(s.URL(), "", nil)
	ti, err := c.Task(context.Background(), sub.Tasks[0].ID)
	if err != nil || ti.State != "running" || ti.Machine != "busybox" || ti.Agent != "a1" {
		t.Errorf("Task = %+v, %v; want running on busybox by a1", ti, err)
	}
	agents, err := c.Agents(context.Background())
	if err != nil || len(agents) != 1 || agents[0].Name != "a1" || len(agents[0].Machines) != 2 || agents[0].Address != "127.0.0.1" {
		t.Errorf("Agents = %+v, %v; want a1 from 127.0.0.1 with two machines", agents, err)
	}
	// The result, twice: stored once, both accepted.
	for i := range 2 {
		code, body := post(t, resp.ResultURL, resultFor(resp, manifest.StatusSuccess, ""), nil)
		if code != http.StatusOK {
			t.Fatalf("result request %d: %d %s", i+1, code, body)
		}
	}
	got, err := c.Submission(context.Background(), sub.ID)
	if err != nil || !got.Done() || !got.Succeeded() || got.Tasks[0].Status != "success" || got.Tasks[0].Attempts != 1 {
		t.Fatalf("Submission = %+v, %v; want its task done with success after one attempt", got, err)
	}
	res, err := c.Result(context.Background(), sub.Tasks[0].ID)
	if err != nil || !bytes.Contains(res, []byte("status: success")) || !bytes.Contains(res, []byte("\nconfigured\n")) {
		t.Errorf("Result = %q, %v; want the result manifest", res, err)
	}
	// Nothing more to do: an empty session, as brep writes it.
	code, body := post(t, s.URL()+"/task", agentReq("", "busybox").Manifests(), nil)
	if code != 200 || string(body) != ": 1\nsession:\n" {
		t.Errorf("task request with nothing queued = %d %q, want 200 %q", code, body, ": 1\nsession:\n")
	}
	q, err := c.Queue(context.Background())
	if err != nil || q.Depth != 0 {
		t.Errorf("Queue = %+v, %v; want empty", q, err)
	}
}

// TestNoTaskForOtherMachineOrToolchain: a task goes only to an agent with
// a matching machine and the task's toolchain.
func TestNoTaskForOtherMachineOrToolchain(t *testing.T) {
	st := openStore(t, "")
	s := startServer(t, st, nil)
	submitHello(t, s, func(r *SubmitRequest) { r.Toolchain = "gcc" })
	for _, c := range []struct {
		name      string
		toolchain string
		machines  []string
	}{
		{"machine matches no pattern", "gcc", []string{"debian", "alpine"}},
		{"another configuration's machine", "gcc", []string{"debian-12"}},
		{"another toolchain", "clang", []string{"busybox"}},
	} {
		req := agentReq("", c.machines...)
		req.ToolchainName = c.toolchain
		if resp := askTask(t, s.URL()+"/task", req, nil); resp.Session != "" {
			t.Errorf("%s: got task %s on %s, want none", c.name, resp.Task.Name, resp.Task.Machine)
		}
	}
	req := agentReq("", "busybox")
	req.ToolchainName, req.Machines[0].Arch = "gcc", "aarch64"
	if resp := askTask(t, s.URL()+"/task", req, nil); resp.Session != "" {
		t.Errorf("aarch64 machine got task for %s, want none", resp.Task.Target)
	}
	req = agentReq("", "alpine", "busybox-2")
	req.ToolchainName, req.Machines[1].Arch = "gcc", "x86_64"
	if resp := askTask(t, s.URL()+"/task", req, nil); resp.Session == "" || resp.Task.Machine != "busybox-2" {
		t.Errorf("matching agent got %+v, want the task on busybox-2", resp)
	}
}

// TestLongPoll: a held task request is answered soon after a submit (here
// or through another controller on the same database), and with no task
// after its wait.
func TestLongPoll(t *testing.T) {
	db := t.TempDir() + "/controller.db"
	st := openStore(t, db)
	s := startServer(t, st, nil)
	other := startServer(t, openStore(t, db), nil)
	wait := http.Header{WaitHeader: {"2"}}

	start := time.Now()
	if resp := askTask(t, s.URL()+"/task", agentReq("", "busybox"), http.Header{WaitHeader: {"0.3"}}); resp.Session != "" {
		t.Fatalf("held request with nothing queued got a task")
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 1500*time.Millisecond {
		t.Errorf("held request with nothing queued answered after %v, want about 300ms", d)
	}

	for _, via := range []*Server{s, other} {
		type answer struct {
			resp *manifest.TaskResponse
			at   time.Time
		}
		got := make(chan answer, 1)
		go func() {
			resp := askTask(t, s.URL()+"/task", agentReq("", "busybox"), wait)
			got <- answer{resp, time.Now()}
		}()
		time.Sleep(300 * time.Millisecond)
		submitted := time.Now()
		submitHello(t, via, nil)
		var a answer
		select {
		case a = <-got:
		case <-time.After(10 * time.Second):
			t.Fatalf("submit through %s: held request not answered", via.URL())
		}
		if a.resp.Session == "" {
			t.Fatalf("submit through %s: held request got no task", via.URL())
		}
		// Generous for a loaded 2-core machine: the wake-up is
		// in-process, the poll every 100ms.
		if d := a.at.Sub(submitted); d > time.Second {
			t.Errorf("submit through %s: task given %v after the submit, want well under a second", via.URL(), d)
		}
		t.Logf("submit through %s: task given %v after the submit returned", via.URL(), a.at.Sub(submitted))
	}
	// A bad header is refused.
	code, body := post(t, s.URL()+"/task", agentReq("", "busybox").Manifests(), http.Header{WaitHeader: {"soon"}})
	if code != 400 || !strings.Contains(string(body), WaitHeader) {
		t.Errorf("Buildfarm-Wait: soon = %d %s, want 400 naming the header", code, body)
	}
}

// TestBodyCaps: oversized requests get 413 and nothing is stored.
func TestBodyCaps(t *testing.T) {
	st := openStore(t, "")
	s := startServer(t, st, nil)
	sub := submitHello(t, s, nil)
	ctx := context.Background()

	big := agentReq("", "busybox")
	big.Extra = []manifest.Pair{{Name: "padding", Value: strings.Repeat("x", MaxTaskRequest)}}
	code, body := post(t, s.URL()+"/task", big.Manifests(), nil)
	if code != http.StatusRequestEntityTooLarge || !strings.Contains(string(body), "larger than") {
		t.Errorf("oversized task request = %d %s, want 413 with a message", code, body)
	}
	if as, _ := st.Agents(ctx); len(as) != 0 {
		t.Errorf("agents after an oversized task request: %+v, want none", as)
	}
	if tk := taskOf(t, st, sub.Tasks[0].ID); tk.State != store.Queued {
		t.Errorf("task after an oversized task request: %s, want queued", tk.State)
	}

	resp := askTask(t, s.URL()+"/task", agentReq("", "busybox"), nil)
	rr := resultFor(resp, manifest.StatusSuccess, "")
	rr[1][len(rr[1])-1].Value = strings.Repeat("log line\n", MaxResultRequest/9+1)
	code, body = post(t, resp.ResultURL, rr, nil)
	if code != http.StatusRequestEntityTooLarge || !strings.Contains(string(body), "larger than") {
		t.Errorf("oversized result request = %d %s, want 413 with a message", code, body)
	}
	if tk := taskOf(t, st, sub.Tasks[0].ID); tk.State != store.Running {
		t.Errorf("task after an oversized result: %s, want still running", tk.State)
	}
	if _, err := st.Result(ctx, sub.Tasks[0].ID); !isNotFound(err) {
		t.Errorf("Result after an oversized result request = %v, want not found", err)
	}
	// A manifest error says where it is.
	code, body = post(t, s.URL()+"/task", []byte(": 1\nagent x\n"), nil)
	if code != 400 || !strings.HasPrefix(string(body), "task request:2:") {
		t.Errorf("bad task request = %d %q, want 400 with task request:LINE:COL", code, body)
	}
	// Within the byte cap, a stream past the protocol's counts is refused
	// at the pair or manifest that passes them, before anything is built.
	many := agentReq("", "busybox")
	for range manifest.TaskRequestLimits.Pairs {
		many.Extra = append(many.Extra, manifest.Pair{Name: "a"})
	}
	code, body = post(t, s.URL()+"/task", many.Manifests(), nil)
	if code != 400 || !strings.Contains(string(body), "pairs") {
		t.Errorf("task request of %d pairs = %d %q, want 400 naming the pairs limit", manifest.TaskRequestLimits.Pairs, code, body)
	}
	rr = resultFor(resp, manifest.StatusSuccess, "")
	for range manifest.ResultRequestLimits.Manifests {
		rr = append(rr, manifest.Manifest{{Name: "", Value: "1"}})
	}
	code, body = post(t, resp.ResultURL, rr, nil)
	if code != 400 || !strings.Contains(string(body), "manifests") {
		t.Errorf("result request of %d manifests = %d %q, want 400 naming the manifests limit", len(rr), code, body)
	}
	if tk := taskOf(t, st, sub.Tasks[0].ID); tk.State != store.Running {
		t.Errorf("task after a result request past the limits: %s, want still running", tk.State)
	}
}

// TestSessions: unknown and expired sessions are refused and store
// nothing; an expired lease requeues, and ends the task abnormal after the
// attempts limit.
func TestSessions(t *testing.T) {
	st := openStore(t, "")
	s := startServer(t, st, func(o *Options) {
		o.BuildTimeout, o.LeaseMargin, o.MaxAttempts = 300*time.Millisecond, 0, 2
	})
	sub := submitHello(t, s, nil)
	id := sub.Tasks[0].ID

	resp := askTask(t, s.URL()+"/task", agentReq("", "busybox"), nil)
	forged := *resp
	forged.Session = strings.Repeat("ab", 16)
	code, body := post(t, resp.ResultURL, resultFor(&forged, manifest.StatusSuccess, ""), nil)
	if code != http.StatusNotFound || !strings.Contains(string(body), "unknown session") {
		t.Errorf("unknown session = %d %s, want 404 unknown session", code, body)
	}

	time.Sleep(600 * time.Millisecond) // the lease runs out; the expiry loop requeues
	code, body = post(t, resp.ResultURL, resultFor(resp, manifest.StatusSuccess, ""), nil)
	if code != http.StatusGone || !strings.Contains(string(body), "session expired") {
		t.Errorf("expired session = %d %s, want 410 session expired", code, body)
	}
	if tk := taskOf(t, st, id); tk.State != store.Queued || tk.Attempts != 1 {
		t.Errorf("task after its lease expired: %s after %d attempts, want queued after 1", tk.State, tk.Attempts)
	}
	if _, err := st.Result(context.Background(), id); !isNotFound(err) {
		t.Errorf("Result after an expired session's result = %v, want not found", err)
	}

	// The second attempt's lease runs out too: the task ends abnormal.
	if resp := askTask(t, s.URL()+"/task", agentReq("", "busybox"), nil); resp.Session == "" {
		t.Fatal("no second attempt")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		tk := taskOf(t, st, id)
		if tk.State == store.Done {
			if tk.Status != "abnormal" || tk.Reason == "" || tk.Attempts != 2 {
				t.Errorf("task after 2 expired leases: %s %q after %d attempts, want abnormal with a reason after 2", tk.Status, tk.Reason, tk.Attempts)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("task after 2 expired leases: %s, want done", tk.State)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestInterruptRequeues: an interrupt result queues the task again.
func TestInterruptRequeues(t *testing.T) {
	st := openStore(t, "")
	s := startServer(t, st, nil)
	sub := submitHello(t, s, nil)
	resp := askTask(t, s.URL()+"/task", agentReq("", "busybox"), nil)
	if code, body := post(t, resp.ResultURL, resultFor(resp, manifest.StatusInterrupt, ""), nil); code != 200 {
		t.Fatalf("interrupt result: %d %s", code, body)
	}
	if tk := taskOf(t, st, sub.Tasks[0].ID); tk.State != store.Queued {
		t.Errorf("task after interrupt: %s, want queued", tk.State)
	}
	if again := askTask(t, s.URL()+"/task", agentReq("", "busybox"), nil); again.Session == "" || again.Session == resp.Session {
		t.Errorf("task request after interrupt: session %q, want a new one", again.Session)
	}
}

// TestShutdownAnswersHeldRequests: stopping the controller answers a held
// task request with no task at once, and Serve returns nil.
func TestShutdownAnswersHeldRequests(t *testing.T) {
	st := openStore(t, "")
	o := DefaultOptions()
	o.Listen = "127.0.0.1:0"
	s, err := New(st, o, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx) }()
	got := make(chan *manifest.TaskResponse, 1)
	go func() {
		got <- askTask(t, s.URL()+"/task", agentReq("", "busybox"), http.Header{WaitHeader: {"20"}})
	}()
	time.Sleep(300 * time.Millisecond)
	stopped := time.Now()
	cancel()
	select {
	case resp := <-got:
		if resp.Session != "" {
			t.Errorf("held request at shutdown got a task")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("held request not answered within 5s of shutdown")
	}
	if err := <-served; err != nil {
		t.Errorf("Serve = %v, want nil after cancel", err)
	}
	if d := time.Since(stopped); d > 3*time.Second {
		t.Errorf("shutdown took %v", d)
	}
}

// TestSeeAgentThrottled checks that an unchanged agent is recorded at most
// once every seeAgentEvery, and a changed one at once.
func TestSeeAgentThrottled(t *testing.T) {
	var s seenAgents
	t0 := time.Now()
	a := store.Agent{Name: "a1", Toolchain: "default", Machines: []store.Machine{{ID: "m-1", Name: "busybox"}}}
	for _, tc := range []struct {
		after time.Duration
		edit  func(*store.Agent)
		want  bool
	}{
		{0, nil, true},
		{time.Second, nil, false},
		{2 * time.Second, func(a *store.Agent) { a.Machines[0].ID = "m-2" }, true}, // upgraded machine
		{3 * time.Second, nil, false},
		{2*time.Second + seeAgentEvery, nil, true},
	} {
		if tc.edit != nil {
			tc.edit(&a)
		}
		if got := s.due(a, t0.Add(tc.after)); got != tc.want {
			t.Errorf("due after %v = %v, want %v", tc.after, got, tc.want)
		}
	}
	s.forget("a1")
	if !s.due(a, t0.Add(2*time.Second+seeAgentEvery)) {
		t.Errorf("due after forget = false, want true")
	}
}

// TestLeasePerTask: a session's lease is its task's build timeout plus the
// margin, not the controller's longest build timeout.
func TestLeasePerTask(t *testing.T) {
	st := openStore(t, "")
	s := startServer(t, st, func(o *Options) { o.BuildTimeout, o.LeaseMargin = 3*time.Hour, time.Minute })
	sub := submitHello(t, s, func(r *SubmitRequest) { r.Timeout = "90s" })
	before := time.Now()
	resp := askTask(t, s.URL()+"/task", agentReq("", "busybox"), nil)
	if resp.Session == "" {
		t.Fatal("no task")
	}
	tk := taskOf(t, st, sub.Tasks[0].ID)
	if lo, hi := before.Add(150*time.Second-time.Second), time.Now().Add(150*time.Second+time.Second); tk.LeaseExpires.Before(lo) || tk.LeaseExpires.After(hi) {
		t.Errorf("lease of a task with timeout 90s: until %v, want 90s + 1m from the claim (%v to %v)", tk.LeaseExpires, lo, hi)
	}
}
