package controller

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/store"
)

// get GETs url with client c (nil: a plain one) and returns the status
// and the body.
func get(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	if c == nil {
		c = &http.Client{}
	}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// live POSTs to one of the live endpoints in session.
func live(t *testing.T, base, what, session string, hdr map[string]string, body []byte) (int, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+"/live/"+what, strings.NewReader(string(body)))
	req.Header.Set(SessionHeader, session)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header
}

// TestBuildPageInert shows that what a build reports, in its live log and
// in its result, is shown as text: markup in it does not become markup.
func TestBuildPageInert(t *testing.T) {
	st := openStore(t, "")
	s := startServer(t, st, func(o *Options) { o.LiveLogLimit = 40 })
	sub := submitHello(t, s, nil)
	resp := askTask(t, s.URL()+"/task", agentReq("", "busybox"), nil)
	id := sub.Tasks[0].ID
	const evil = `<script>alert(1)</script><img src=x onerror=alert(2)>`

	if code, _ := live(t, s.URL(), "log", resp.Session, map[string]string{OperationHeader: "update", OffsetHeader: "0"}, []byte(evil+"\n")); code != http.StatusOK {
		t.Fatalf("live log: %d", code)
	}
	code, hdr := live(t, s.URL(), "log", resp.Session, map[string]string{OperationHeader: "update", OffsetHeader: fmt.Sprint(len(evil) + 1)}, []byte("more than the limit allows\n"))
	if code != http.StatusOK || hdr.Get(LogFullHeader) == "" {
		t.Errorf("live log past the limit: %d, %s %q; want 200 and the log said full", code, LogFullHeader, hdr.Get(LogFullHeader))
	}
	ev := []manifest.Manifest{{{Name: "", Value: "1"}, {Name: "event", Value: "started"}, {Name: "operation", Value: "update"}, {Name: "detail", Value: evil}}}
	if code, body := post(t, s.URL()+"/live/event", ev, http.Header{SessionHeader: {resp.Session}}); code != http.StatusOK {
		t.Fatalf("live event: %d %s", code, body)
	}

	_, page := get(t, nil, fmt.Sprintf("%s/builds/%d", s.URL(), id))
	for _, want := range []string{"&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;", "The live log reached its limit"} {
		if !strings.Contains(page, want) {
			t.Errorf("build page lacks %q", want)
		}
	}
	if strings.Contains(page, "<script>alert") || strings.Contains(page, "<img src=x") {
		t.Errorf("build page has the log's markup as markup:\n%s", page)
	}

	res := &manifest.ResultRequest{Session: resp.Session, Result: manifest.Result{Name: resp.Task.Name, Version: resp.Task.Version,
		Status: manifest.StatusError, Results: []manifest.OperationResult{{Operation: "update", Status: manifest.StatusError, Log: evil + "\n"}}}}
	if code, body := post(t, s.URL()+"/result", res.Manifests(), nil); code != http.StatusOK {
		t.Fatalf("result: %d %s", code, body)
	}
	_, page = get(t, nil, fmt.Sprintf("%s/builds/%d", s.URL(), id))
	if n := strings.Count(page, "&lt;script&gt;alert(1)"); n < 2 {
		t.Errorf("build page shows the escaped log %d times, want in the live log and in the operation", n)
	}
	if strings.Contains(page, "<script>alert") {
		t.Errorf("build page has the result log's markup as markup")
	}
	if !regexp.MustCompile(`class="badge big st-error"`).MatchString(page) {
		t.Errorf("build page has no error badge")
	}
	// The raw log is plain text, not HTML.
	r, err := http.Get(fmt.Sprintf("%s/builds/%d/log", s.URL(), id))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") || r.Header.Get("X-Content-Type-Options") != "nosniff" || !strings.Contains(string(raw), "=== update: error\n"+evil) {
		t.Errorf("raw log: %s, %q", ct, raw)
	}
}

// TestCancelRunning cancels a running task through the API: the agent's
// next live request is answered with the cancel, its abort result ends the
// task with the reason, and the task is not queued again.
func TestCancelRunning(t *testing.T) {
	st := openStore(t, "")
	s := startServer(t, st, func(o *Options) { o.AdminToken = "tok" })
	sub := submitHello(t, startServer(t, st, nil), nil)
	id := sub.Tasks[0].ID
	resp := askTask(t, s.URL()+"/task", agentReq("", "busybox"), nil)
	if code, hdr := live(t, s.URL(), "poll", resp.Session, nil, nil); code != http.StatusOK || hdr.Get(CancelHeader) != "" {
		t.Fatalf("poll before the cancel: %d, cancel %q", code, hdr.Get(CancelHeader))
	}
	// Without the token: refused.
	if code, _ := post(t, fmt.Sprintf("%s/api/v1/tasks/%d/cancel", s.URL(), id), []byte(`{}`), nil); code != http.StatusUnauthorized {
		t.Errorf("cancel without the token: %d, want 401", code)
	}
	code, body := post(t, fmt.Sprintf("%s/api/v1/tasks/%d/cancel", s.URL(), id), []byte(`{"reason":"no longer wanted"}`),
		http.Header{"Authorization": {"Bearer tok"}})
	if code != http.StatusOK || !strings.Contains(string(body), `"cancel": "no longer wanted"`) {
		t.Fatalf("cancel: %d %s", code, body)
	}
	if code, hdr := live(t, s.URL(), "poll", resp.Session, nil, nil); code != http.StatusOK || hdr.Get(CancelHeader) != "no longer wanted" {
		t.Errorf("poll after the cancel: %d, cancel %q; want the reason", code, hdr.Get(CancelHeader))
	}
	if code, body := post(t, s.URL()+"/result", resultFor(resp, manifest.StatusInterrupt, ""), nil); code != http.StatusOK {
		t.Fatalf("result: %d %s", code, body)
	}
	if got := taskOf(t, st, id); got.State != store.Done || got.Status != "abort" || got.Reason != "no longer wanted" {
		t.Errorf("task after its interrupt = %s %s %q; want done abort with the reason", got.State, got.Status, got.Reason)
	}
	if again := askTask(t, s.URL()+"/task", agentReq("", "busybox"), nil); again.Session != "" {
		t.Errorf("the cancelled task was given again")
	}
	if code, _ := live(t, s.URL(), "poll", resp.Session, nil, nil); code != http.StatusGone {
		t.Errorf("poll after the result: %d, want 410", code)
	}
	if code, _ := live(t, s.URL(), "poll", "nosuchsession", nil, nil); code != http.StatusNotFound {
		t.Errorf("poll of an unknown session: %d, want 404", code)
	}
	// A second cancel of the finished task, and a rebuild.
	if code, _ := post(t, fmt.Sprintf("%s/api/v1/tasks/%d/cancel", s.URL(), id), nil, http.Header{"Authorization": {"Bearer tok"}}); code != http.StatusConflict {
		t.Errorf("cancel of a done task: %d, want 409", code)
	}
	code, body = post(t, fmt.Sprintf("%s/api/v1/tasks/%d/rebuild", s.URL(), id), nil, http.Header{"Authorization": {"Bearer tok"}})
	var nt Task
	if code != http.StatusCreated || json.Unmarshal(body, &nt) != nil || nt.ID == id || nt.State != "queued" {
		t.Fatalf("rebuild: %d %s", code, body)
	}
	if again := askTask(t, s.URL()+"/task", agentReq("", "busybox"), nil); again.Session == "" {
		t.Errorf("the rebuild was not given to the agent")
	}
}

// TestDashboardForms signs in with the token and cancels from the page;
// forms without the CSRF token, from another origin or without signing in
// are refused and change nothing.
func TestDashboardForms(t *testing.T) {
	st := openStore(t, "")
	s := startServer(t, st, func(o *Options) { o.AdminToken = "tok" })
	sub := submitHello(t, startServer(t, st, nil), nil)
	id := sub.Tasks[0].ID
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	code, page := get(t, c, fmt.Sprintf("%s/builds/%d", s.URL(), id))
	if code != http.StatusOK || strings.Contains(page, `id="cancel"`) || !strings.Contains(page, "to cancel") {
		t.Fatalf("build page before signing in: %d; want no cancel button and a sign-in link", code)
	}
	csrf := regexp.MustCompile(`name="csrf" value="([^"]+)"`)
	_, login := get(t, c, s.URL()+"/login")
	m := csrf.FindStringSubmatch(login)
	if m == nil {
		t.Fatalf("login page has no CSRF field:\n%s", login)
	}
	form := func(path string, v url.Values, origin string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, s.URL()+path, strings.NewReader(v.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	cancelPath := fmt.Sprintf("/builds/%d/cancel", id)
	if code := form(cancelPath, url.Values{"csrf": {m[1]}}, ""); code != http.StatusForbidden {
		t.Errorf("cancel before signing in: %d, want 403", code)
	}
	if code := form("/login", url.Values{"csrf": {m[1]}, "token": {"wrong"}}, ""); code != http.StatusUnauthorized {
		t.Errorf("sign-in with a wrong token: %d, want 401", code)
	}
	if code := form("/login", url.Values{"token": {"tok"}}, ""); code != http.StatusForbidden {
		t.Errorf("sign-in without the CSRF token: %d, want 403", code)
	}
	if code := form("/login", url.Values{"csrf": {m[1]}, "token": {"tok"}, "next": {"/builds"}}, s.URL()); code != http.StatusSeeOther {
		t.Fatalf("sign-in: %d, want 303", code)
	}
	if code := form(cancelPath, url.Values{"csrf": {"forged"}}, ""); code != http.StatusForbidden {
		t.Errorf("cancel with a wrong CSRF token: %d, want 403", code)
	}
	if code := form(cancelPath, url.Values{"csrf": {m[1]}}, "http://evil.example"); code != http.StatusForbidden {
		t.Errorf("cancel from another origin: %d, want 403", code)
	}
	if got := taskOf(t, st, id); got.State != store.Queued {
		t.Fatalf("task after refused forms: %s, want still queued", got.State)
	}
	_, page = get(t, c, fmt.Sprintf("%s/builds/%d", s.URL(), id))
	if !strings.Contains(page, `id="cancel"`) {
		t.Errorf("build page after signing in has no cancel button")
	}
	if code := form(cancelPath, url.Values{"csrf": {m[1]}}, s.URL()); code != http.StatusSeeOther {
		t.Fatalf("cancel: %d, want 303", code)
	}
	if got := taskOf(t, st, id); got.State != store.Done || got.Status != "abort" || !strings.Contains(got.Reason, "cancelled") {
		t.Errorf("task after cancel = %s %s %q, want done abort cancelled", got.State, got.Status, got.Reason)
	}
	// A forged sign-in cookie does not pass.
	if s.validSession("00."+fmt.Sprint(time.Now().Add(time.Hour).Unix())+".00", time.Now()) {
		t.Errorf("a forged sign-in is valid")
	}
	if v := s.signSession(time.Now().Add(-time.Second)); s.validSession(v, time.Now()) {
		t.Errorf("an expired sign-in is valid")
	}
}

// TestPagesAndTwins gets every page and its JSON twin.
func TestPagesAndTwins(t *testing.T) {
	st := openStore(t, "")
	s := startServer(t, st, nil)
	sub := submitHello(t, s, nil)
	askTask(t, s.URL()+"/task", agentReq("", "busybox"), nil)
	submitHello(t, s, func(r *SubmitRequest) { r.Version = "2.0" })
	for _, c := range []struct{ page, twin, want string }{
		{"/", "/api/v1/builds", "hello"},
		{"/builds?status=running&page=1", "/api/v1/builds?status=running", "busybox"},
		{fmt.Sprintf("/builds/%d", sub.Tasks[0].ID), fmt.Sprintf("/api/v1/builds/%d", sub.Tasks[0].ID), "claimed"},
		{"/submissions", "/api/v1/submissions", "2.0"},
		{fmt.Sprintf("/submissions/%d", sub.ID), fmt.Sprintf("/api/v1/submissions/%d", sub.ID), "hello"},
		{"/agents", "/api/v1/agents", "a1"},
		{"/machines", "/api/v1/machines", "busybox machine"},
		{"/queue", "/api/v1/queue", "2.0"},
	} {
		code, page := get(t, nil, s.URL()+c.page)
		if code != http.StatusOK || !strings.Contains(page, c.want) || !strings.Contains(page, "</html>") {
			t.Errorf("page %s: %d, want 200 with %q", c.page, code, c.want)
		}
		code, twin := get(t, nil, s.URL()+c.twin)
		if code != http.StatusOK || !strings.Contains(twin, c.want) || !json.Valid([]byte(twin)) {
			t.Errorf("twin %s: %d, want JSON with %q: %s", c.twin, code, c.want, twin)
		}
	}
	if code, _ := get(t, nil, s.URL()+"/builds?status=bogus"); code != http.StatusBadRequest {
		t.Errorf("builds with a bad status filter: %d, want 400", code)
	}
	if code, _ := get(t, nil, s.URL()+"/builds/999999"); code != http.StatusNotFound {
		t.Errorf("an unknown build: %d, want 404", code)
	}
}

// TestMetricsMove scrapes /metrics after a task's round trip: the
// dispatch and build histograms and the result counter moved, and the
// store's figures are there.
func TestMetricsMove(t *testing.T) {
	st := openStore(t, "")
	s := startServer(t, st, nil)
	submitHello(t, s, nil)
	resp := askTask(t, s.URL()+"/task", agentReq("", "busybox"), nil)
	if code, body := post(t, s.URL()+"/result", resultFor(resp, manifest.StatusSuccess, ""), nil); code != http.StatusOK {
		t.Fatalf("result: %d %s", code, body)
	}
	post(t, s.URL()+"/result", []byte("garbage"), nil)
	_, m := get(t, nil, s.URL()+"/metrics")
	for _, re := range []string{
		`buildfarm_dispatch_latency_seconds_count 1\n`,
		`buildfarm_build_duration_seconds_count\{machine="busybox"\} 1\n`,
		`buildfarm_results_total\{outcome="stored",status="success"\} 1\n`,
		`buildfarm_tasks\{state="done",status="success"\} 1\n`,
		`buildfarm_queue_depth 0\n`,
		`buildfarm_agents_seen\{within="5m"\} 1\n`,
		`buildfarm_http_request_errors_total\{code="Bad Request",endpoint="POST /result"\} 1\n`,
	} {
		if !regexp.MustCompile(re).MatchString(m) {
			t.Errorf("metrics lack %s", re)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", m)
	}
}
