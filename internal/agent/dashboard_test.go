package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/buildfarm/buildfarm/internal/archive"
	"github.com/buildfarm/buildfarm/internal/controller"
	"github.com/buildfarm/buildfarm/internal/image"
	"github.com/buildfarm/buildfarm/internal/store"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// slowUpdate is an update step that prints a line a second, each with the
// guest's clock in microseconds (busybox adjtimex), one with markup in
// it, and then builds.
const slowUpdate = `buildfarm-update: for i in 1 2 3 4 5 6 7 8; do ` +
	`echo "line $i at $(busybox adjtimex | awk '/tv_sec/{s=$2}/tv_usec/{u=$2}END{printf "%d.%06d", s, u}')"; sleep 1; done; ` +
	`echo '<script>window.pwned=1</script><b>not bold</b>'; sh ./build.sh`

// endlessUpdate prints a line a second for five minutes: the task to
// cancel.
const endlessUpdate = `buildfarm-update: i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo "waiting $i"; sleep 1; done`

// TestDashboardLive is the dashboard's end to end test, in a real browser
// (Debian's chromium, headless, driven by chromedp) against a real
// controller, agent and VM: a task submitted through the API shows its log
// lines on its page as the guest prints them and its final status, without
// a reload; markup in the log stays text; a second task, cancelled from its
// page after signing in, ends aborted with nothing left behind (no QEMU,
// no snapshot, no namespace); and the controller's and the agent's
// /metrics moved. It also measures the live log's latency, from a line's
// time in the guest to its arrival at the controller's API (see
// bench/README.md). Screenshots are kept in the test's artifact directory
// (go test -artifacts).
func TestDashboardLive(t *testing.T) {
	chromium := testenv.NeedProgram(t, "chromium")
	f := newFarm(t, false, image.Options{})
	shots := t.ArtifactDir()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	// The controller, with an admin token, on SQLite.
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "controller.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const token = "dashboard-test-token"
	co := controller.DefaultOptions()
	co.Listen, co.AdminToken = "127.0.0.1:0", token
	srv, err := controller.New(st, co, slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	sctx, stopServer := context.WithCancel(ctx)
	wg.Go(func() { srv.Serve(sctx) })
	defer func() { stopServer(); wg.Wait() }()
	base := srv.URL()

	// The agent, in-process, with its metrics.
	o := f.options()
	o.FakeBootstrap = true
	o.RequestInterval = time.Second
	o.BuildTimeout = 5 * time.Minute
	o.Metrics = freeAddr(t)
	a, err := New(o, slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug})), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	actx, stopAgent := context.WithCancel(ctx)
	agentDone := make(chan error, 1)
	go func() { agentDone <- a.Run(actx, []string{base}) }()
	defer func() {
		stopAgent()
		if err := <-agentDone; err != nil {
			t.Errorf("agent: %v", err)
		}
	}()

	// The browser.
	bctx, stopBrowser := browser(t, ctx, chromium)
	defer stopBrowser()
	run := func(what string, act chromedp.Action[chromedp.Void]) {
		t.Helper()
		if _, err := chromedp.Run(bctx, act); err != nil {
			t.Fatalf("browser: %s: %v", what, err)
		}
	}
	eval := func(expr string) string {
		t.Helper()
		v, err := chromedp.Run(bctx, chromedp.Evaluate[string](expr))
		if err != nil {
			t.Fatalf("browser: %s: %v", expr, err)
		}
		return v
	}
	shot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		p := filepath.Join(shots, name)
		if err := os.WriteFile(p, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s", p)
	}

	// 1. Submit through the API and watch the page.
	id := submitSlow(t, ctx, base, token, slowUpdate)
	run("open the build page", chromedp.Navigate(fmt.Sprintf("%s/builds/%d", base, id)))
	eval(`String(window.notReloaded = "yes")`)
	lines := regexp.MustCompile(`(?m)^line (\d) at (\d+\.\d+)$`)
	arrivals := map[string]time.Time{} // line number → when the API first had it
	var counts []int                   // the page's line counts, as they changed
	var api []controller.LogChunk
	after := int64(0)
	midShot := false
	deadline := time.Now().Add(4 * time.Minute)
	for {
		// The controller's API, for the latency.
		cs := liveChunks(t, base, id, after)
		now := time.Now()
		for _, c := range cs {
			after = c.ID
			api = append(api, c)
			for _, m := range lines.FindAllStringSubmatch(c.Text, -1) {
				if _, ok := arrivals[m[1]]; !ok {
					arrivals[m[1]] = now
				}
			}
		}
		// The page.
		n := len(lines.FindAllString(eval(`document.getElementById("live-log").textContent`), -1))
		if len(counts) == 0 || counts[len(counts)-1] != n {
			counts = append(counts, n)
		}
		if n >= 3 && !midShot {
			shot("build-running.png")
			midShot = true
		}
		status := eval(`document.getElementById("status").textContent`)
		if status == "success" || status == "error" || status == "abnormal" {
			if status != "success" {
				t.Fatalf("build ended %s, want success", status)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("build page shows %q after 4 minutes; line counts seen %v", status, counts)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if eval(`String(window.notReloaded)`) != "yes" {
		t.Errorf("the page was reloaded")
	}
	// Lines came one by one: the page showed several partial logs.
	if inBetween := slices.DeleteFunc(slices.Clone(counts), func(n int) bool { return n == 0 || n == 8 }); len(inBetween) < 3 {
		t.Errorf("the page's line counts went %v: want lines appearing over time (at least 3 counts between 0 and 8)", counts)
	}
	// Markup in the log is text.
	text := eval(`document.getElementById("live-log").textContent`)
	if !strings.Contains(text, "<script>window.pwned=1</script><b>not bold</b>") {
		t.Errorf("live log lacks the markup line as text:\n%s", text)
	}
	if eval(`String(window.pwned)`) != "undefined" || eval(`String(document.querySelectorAll("#live-log b, .op b").length)`) != "0" {
		t.Errorf("markup in the log became markup on the page")
	}
	if ops := eval(`String(document.querySelectorAll("section.op").length)`); ops != "4" {
		t.Errorf("the page shows %s operations after the build, want 4 (without a reload)", ops)
	}
	shot("build-page.png")
	latency(t, api, arrivals)

	// 2. Cancel a second task from its page, signed in.
	id2 := submitSlow(t, ctx, base, token, endlessUpdate)
	run("sign in", chromedp.Navigate(fmt.Sprintf("%s/login?next=/builds/%d", base, id2)))
	run("token", chromedp.SendKeys(chromedp.ID("token"), token))
	run("submit", chromedp.Click(chromedp.ID("signin")))
	run("cancel button", chromedp.WaitVisible(chromedp.ID("cancel")))
	for !strings.Contains(eval(`document.getElementById("live-log").textContent`), "waiting 2") {
		if time.Now().After(deadline) {
			t.Fatal("the second task printed nothing in time")
		}
		time.Sleep(100 * time.Millisecond)
	}
	shot("build-to-cancel.png")
	cancelled := time.Now()
	eval(`String(window.beforeCancel = "yes")`)
	run("cancel", chromedp.Click(chromedp.ID("cancel")))
	// The form's answer is the build's page again: wait for it, then
	// watch it change without another load.
	for eval(`String(window.beforeCancel)`) == "yes" || eval(`document.readyState`) != "complete" {
		if time.Since(cancelled) > time.Minute {
			t.Fatal("the cancel form's answer did not load")
		}
		time.Sleep(20 * time.Millisecond)
	}
	eval(`String(window.notReloaded2 = "yes")`)
	t.Logf("after the cancel the page shows %q", eval(`document.getElementById("status").textContent`))
	for {
		status := eval(`document.getElementById("status") ? document.getElementById("status").textContent : ""`)
		if status == "abort" {
			break
		}
		if time.Since(cancelled) > time.Minute {
			t.Fatalf("cancelled build shows %q a minute after the cancel", status)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("cancelled build ended abort %v after the click", time.Since(cancelled).Round(time.Millisecond))
	if eval(`String(window.notReloaded2)`) != "yes" {
		t.Errorf("the page was reloaded after the cancel")
	}
	shot("build-cancelled.png")
	got, err := st.Task(ctx, id2)
	if err != nil || got.State != store.Done || got.Status != "abort" || !strings.Contains(got.Reason, "cancelled from the dashboard") {
		t.Errorf("cancelled task = %+v, %v; want done, abort, cancelled from the dashboard", got, err)
	}
	if !strings.Contains(f.log.String(), "task cancelled: its VM was stopped and its snapshot deleted") {
		t.Errorf("the agent did not log the cancel")
	}
	// Between tasks the agent enumerates its machines before each task
	// request, and an enumeration holds a snapshot of the machine's
	// current revision (busybox-default-XXXXXXXX, like a task's) while it
	// reads the manifest in it. Look while none runs: with the agent's
	// enumeration lock held, and no task queued, a snapshot seen is one
	// the cancelled task left.
	a.enumMu.Lock()
	checkNothingLeft(t, f)
	a.enumMu.Unlock()

	// 3. Metrics moved.
	_, cm := httpGet(t, base+"/metrics")
	_, am := httpGet(t, "http://"+o.Metrics+"/metrics")
	for _, c := range []struct{ text, metric string }{
		{cm, `buildfarm_dispatch_latency_seconds_count`},
		{cm, `buildfarm_build_duration_seconds_count{machine="busybox"}`},
		{cm, `buildfarm_results_total{outcome="stored",status="abort"}`},
		{cm, `buildfarm_tasks{state="done",status="success"}`},
		{am, `buildfarm_agent_vm_boots_total`},
		{am, `buildfarm_agent_boot_seconds_count`},
		{am, `buildfarm_agent_snapshot_seconds_count`},
		{am, `buildfarm_agent_tftp_bytes_total{direction="put"}`},
		{am, `buildfarm_agent_tftp_bytes_total{direction="get"}`},
	} {
		if v := metricValue(c.text, c.metric); v < 1 {
			t.Errorf("metric %s = %v after two builds, want at least 1", c.metric, v)
		}
	}
	if v := metricValue(am, "buildfarm_agent_vm_boots_total"); v < 2 {
		t.Errorf("buildfarm_agent_vm_boots_total = %v, want 2 (one VM a task)", v)
	}
	if v := metricValue(am, "buildfarm_agent_results_spooled"); v != 0 {
		t.Errorf("buildfarm_agent_results_spooled = %v, want 0 once delivered", v)
	}
}

// browser starts chromium headless with a fresh profile; the stop
// function ends it.
func browser(t *testing.T, ctx context.Context, chromium string) (context.Context, func()) {
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1200, 1500),
	}
	actx, stopAlloc := chromedp.NewExecAllocator(ctx, opts...)
	bctx, stopTab := chromedp.NewContext(actx)
	return bctx, func() { stopTab(); stopAlloc() }
}

// submitSlow submits examples/hello with its update step replaced.
func submitSlow(t *testing.T, ctx context.Context, base, token, update string) int64 {
	t.Helper()
	c, err := controller.NewAPIClient(base, token, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join("..", "..", "examples", "hello")
	tmpl, err := os.ReadFile(filepath.Join(dir, "task.manifest"))
	if err != nil {
		t.Fatal(err)
	}
	text := regexp.MustCompile(`(?m)^buildfarm-update:.*$`).ReplaceAllLiteralString(string(tmpl), update)
	var packed bytes.Buffer
	if err := archive.Pack(&packed, dir, nil); err != nil {
		t.Fatal(err)
	}
	ai, err := c.PutArchive(ctx, packed.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	sub, err := c.Submit(ctx, &controller.SubmitRequest{Archive: ai.SHA256, Template: text})
	if err != nil {
		t.Fatal(err)
	}
	return sub.Tasks[0].ID
}

func liveChunks(t *testing.T, base string, id, after int64) []controller.LogChunk {
	t.Helper()
	_, body := httpGet(t, fmt.Sprintf("%s/api/v1/builds/%d/log?after=%d", base, id, after))
	var l controller.LiveLog
	if err := json.Unmarshal([]byte(body), &l); err != nil {
		t.Fatalf("live log: %v: %s", err, body)
	}
	return l.Chunks
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metricValue is the value of the sample named so (with its labels) in
// a Prometheus text exposition, or -1.
func metricValue(text, sample string) float64 {
	for line := range strings.Lines(text) {
		if rest, ok := strings.CutPrefix(line, sample+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

// freeAddr is a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// latency logs the live log's latency: from the time a line carries (the
// guest's clock when it was printed) to its arrival at the controller's
// API (polled every 20 ms or so). The guest's clock is not the host's:
// the offset is taken as the smallest difference between a chunk's
// storing at the controller and the guest time of the line it starts
// with (that line waited least), so the figures are relative to the
// fastest line, which spent at least a TFTP upload and an HTTP POST on
// its way.
func latency(t *testing.T, chunks []controller.LogChunk, arrivals map[string]time.Time) {
	re := regexp.MustCompile(`^line (\d) at (\d+)\.(\d{6})$`)
	guest := map[string]time.Time{}
	offset := time.Duration(1<<63 - 1)
	for _, c := range chunks {
		for i, l := range strings.Split(c.Text, "\n") {
			m := re.FindStringSubmatch(l)
			if m == nil {
				continue
			}
			s, _ := strconv.ParseInt(m[2], 10, 64)
			us, _ := strconv.ParseInt(m[3], 10, 64)
			g := time.Unix(s, us*1000)
			guest[m[1]] = g
			if i == 0 {
				offset = min(offset, c.At.Sub(g))
			}
		}
	}
	var ds []time.Duration
	for n, g := range guest {
		if at, ok := arrivals[n]; ok && offset < time.Duration(1<<63-1) {
			ds = append(ds, at.Sub(g)-offset)
		}
	}
	if len(ds) == 0 {
		t.Logf("live log latency: no line to measure")
		return
	}
	slices.Sort(ds)
	t.Logf("live log latency, guest line to the controller's API, over the fastest line's (%d lines): median %v, min %v, max %v",
		len(ds), ds[len(ds)/2].Round(time.Millisecond), ds[0].Round(time.Millisecond), ds[len(ds)-1].Round(time.Millisecond))
	if ds[len(ds)/2] > 5*time.Second {
		t.Errorf("live log median latency %v, want well under 5 s", ds[len(ds)/2])
	}
}
