// Command controller measures the controller (package controller) against
// its baselines, in one run:
//
//	go run ./bench/controller [-agents 16] [-tasks 3000] [-rounds 3]
//	    [-db sqlite,postgres] [-latency-runs 20] [-bbot-interval 2s] [-bbot-real 3]
//
// Throughput: -agents simulated agents (goroutines speaking bbot's protocol
// over HTTP with package ctlclient: task request, task response, result
// request) drain -tasks queued tasks from a real controller listening on
// loopback, on SQLite and on a real PostgreSQL (package pgtest; needs
// Debian's postgresql, and root runs it as nobody). Reported: task claims
// plus result uploads per second, the median of -rounds rounds, each on a
// fresh database. Its baseline, in the same round on the same database,
// is the store alone: as many goroutines calling Store.Claim and
// Store.Complete without HTTP, which bounds what the controller can do.
// brep, the C++ controller we follow, needs build2 and Apache, which this
// machine cannot build, so it has no figure here.
//
// Dispatch latency: from the start of a submit (the API call) to a real
// agent (package agent in this process, --fake-machine and --fake-build,
// so no VM) logging that it has the task, with long polling. Its
// baseline: an agent at bbot's cadence, asking without long polling and
// sleeping a fixed interval between requests (bbot sleeps 60 s), simulated
// with ctlclient at -bbot-interval and scaled to 60 s, plus -bbot-real
// samples at the real 60 s.
//
// It prints Markdown tables for bench/README.md and writes the figures to
// -json (bench/controller/results.json).
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/buildfarm/buildfarm/internal/agent"
	"github.com/buildfarm/buildfarm/internal/archive"
	"github.com/buildfarm/buildfarm/internal/controller"
	"github.com/buildfarm/buildfarm/internal/ctlclient"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/store"
	"github.com/buildfarm/buildfarm/internal/store/pgtest"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench/controller: %v\n", err)
		os.Exit(1)
	}
}

// Results are what -json holds.
type Results struct {
	Date       string       `json:"date"`
	CPUs       int          `json:"cpus"`
	Agents     int          `json:"agents"`
	Tasks      int          `json:"tasks"`
	Throughput []Throughput `json:"throughput"`
	Latency    []Latency    `json:"latency"`
}

// Throughput is one database's figures: operations (claims plus result
// uploads, or Claim plus Complete calls) per second, medians of the
// rounds (the ratio: the median of the rounds' ratios).
type Throughput struct {
	DB              string  `json:"db"`
	Controller      float64 `json:"controller_ops_per_s"`
	StoreAlone      float64 `json:"store_alone_ops_per_s"`
	ControllerRatio float64 `json:"controller_over_store"`
	Goal            float64 `json:"goal_ops_per_s"`
	Rounds          []Round `json:"rounds"`
}

// Round is one measurement of the controller and of the store alone.
type Round struct {
	Controller float64 `json:"controller_ops_per_s"`
	StoreAlone float64 `json:"store_alone_ops_per_s"`
}

// Latency is one way of dispatching, in seconds.
type Latency struct {
	Case     string    `json:"case"`
	Median   float64   `json:"median_s"`
	Min      float64   `json:"min_s"`
	Max      float64   `json:"max_s"`
	Scaled   float64   `json:"median_scaled_to_60s,omitempty"`
	Interval float64   `json:"poll_interval_s,omitempty"`
	Samples  []float64 `json:"samples_s"`
}

type config struct {
	agents, tasks, rounds, latencyRuns, bbotReal int
	bbotInterval                                 time.Duration
	dbs                                          []string
	log                                          *slog.Logger
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fl := flag.NewFlagSet("controller", flag.ContinueOnError)
	var c config
	fl.IntVar(&c.agents, "agents", 16, "simulated agents (throughput)")
	fl.IntVar(&c.tasks, "tasks", 3000, "tasks drained per measurement (throughput)")
	fl.IntVar(&c.rounds, "rounds", 3, "measurements of each database (throughput; medians reported)")
	dbs := fl.String("db", "sqlite,postgres", "databases to measure throughput on: sqlite, postgres")
	fl.IntVar(&c.latencyRuns, "latency-runs", 20, "submits timed for each dispatch case (0: skip the latency part)")
	fl.DurationVar(&c.bbotInterval, "bbot-interval", 2*time.Second, "the simulated bbot agent's interval between task requests (scaled to 60 s)")
	fl.IntVar(&c.bbotReal, "bbot-real", 3, "samples with a bbot agent's real 60 s interval")
	jsonOut := fl.String("json", filepath.Join("bench", "controller", "results.json"), "`file` to write the results to as JSON")
	verbose := fl.Bool("v", false, "log the controller and agent")
	cpuProfile := fl.String("cpuprofile", "", "write a CPU profile of the throughput part to `file`")
	if err := fl.Parse(args); err != nil {
		return err
	}
	c.dbs = strings.Split(*dbs, ",")
	for _, d := range c.dbs {
		if d != "sqlite" && d != "postgres" {
			return fmt.Errorf("-db %q: want sqlite and/or postgres", d)
		}
	}
	if c.agents < 1 || c.tasks < 1 || c.rounds < 1 || c.latencyRuns < 0 || c.bbotReal < 0 || c.bbotInterval <= 0 {
		return errors.New("-agents, -tasks and -rounds must be positive, -latency-runs and -bbot-real not negative, -bbot-interval positive")
	}
	c.log = slog.New(slog.DiscardHandler)
	if *verbose {
		c.log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	work, err := os.MkdirTemp("", "bench-controller-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	res := Results{Date: time.Now().UTC().Format(time.RFC3339), CPUs: runtime.GOMAXPROCS(0), Agents: c.agents, Tasks: c.tasks}

	if *cpuProfile != "" {
		pf, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(pf); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	var pg *pgtest.Server
	defer func() {
		if pg != nil {
			pg.Stop()
		}
	}()
	// Rounds alternate the databases, each on a fresh database, so that
	// a burst of load on the machine does not fall on one alone.
	tps := map[string]*Throughput{}
	for round := range c.rounds {
		for _, db := range c.dbs {
			tp := tps[db]
			if tp == nil {
				tp = &Throughput{DB: db, Goal: 2000}
				if db == "postgres" {
					tp.Goal = 1000
				}
				tps[db] = tp
			}
			dsn := filepath.Join(work, fmt.Sprintf("throughput-%d.db", round))
			if db == "postgres" {
				if pg == nil {
					if pg, err = pgtest.StartServer(ctx, ""); err != nil {
						return err
					}
				}
				if dsn, err = pg.NewDatabase(ctx); err != nil {
					return err
				}
			}
			fmt.Fprintf(os.Stderr, "throughput on %s, round %d: %d tasks, %d agents\n", db, round+1, c.tasks, c.agents)
			r, err := throughput(ctx, c, dsn)
			if err != nil {
				return fmt.Errorf("%s: %w", db, err)
			}
			tp.Rounds = append(tp.Rounds, r)
		}
	}
	for _, db := range c.dbs {
		tp := tps[db]
		var ctl, st, ratio []float64
		for _, r := range tp.Rounds {
			ctl, st, ratio = append(ctl, r.Controller), append(st, r.StoreAlone), append(ratio, r.Controller/r.StoreAlone)
		}
		tp.Controller, tp.StoreAlone, tp.ControllerRatio = median(ctl), median(st), median(ratio)
		res.Throughput = append(res.Throughput, *tp)
	}
	pprof.StopCPUProfile()
	if c.latencyRuns > 0 {
		ls, err := latency(ctx, c, filepath.Join(work, "latency.db"), work)
		if err != nil {
			return fmt.Errorf("latency: %w", err)
		}
		res.Latency = ls
	}
	report(out, res)
	if *jsonOut != "" {
		return testenv.WriteResults(*jsonOut, res)
	}
	return nil
}

// farm is a controller serving a store on loopback, with an API client.
type farm struct {
	st   store.Store
	srv  *controller.Server
	api  *controller.APIClient
	sum  string // the uploaded sources archive
	stop func()
}

const buildtab = "busybox* busybox x86_64-linux-gnu\n"

// startFarm opens dsn and serves a controller on it; edit changes the
// controller's options.
func startFarm(ctx context.Context, c config, dsn string, edit func(*controller.Options)) (*farm, error) {
	st, err := store.Open(ctx, dsn, nil)
	if err != nil {
		return nil, err
	}
	o := controller.DefaultOptions()
	o.Listen = "127.0.0.1:0"
	if o.Buildtab, err = controller.ParseBuildtab(strings.NewReader(buildtab), "buildtab"); err != nil {
		st.Close()
		return nil, err
	}
	if edit != nil {
		edit(&o)
	}
	srv, err := controller.New(st, o, c.log)
	if err == nil {
		err = srv.Listen()
	}
	if err != nil {
		st.Close()
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(sctx)
	}()
	f := &farm{st: st, srv: srv, stop: func() { cancel(); <-done; st.Close() }}
	if f.api, err = controller.NewAPIClient(srv.URL(), "", nil); err != nil {
		f.stop()
		return nil, err
	}
	var packed bytes.Buffer
	if err := archive.Pack(&packed, filepath.Join("examples", "hello"), nil); err != nil {
		f.stop()
		return nil, fmt.Errorf("examples/hello (run from the module root): %w", err)
	}
	a, err := f.api.PutArchive(ctx, packed.Bytes())
	if err != nil {
		f.stop()
		return nil, err
	}
	f.sum = a.SHA256
	return f, nil
}

var template = func() string {
	b, err := os.ReadFile(filepath.Join("examples", "hello", "task.manifest"))
	if err != nil {
		return ""
	}
	return string(b)
}()

// submit submits one task of examples/hello through the API.
func (f *farm) submit(ctx context.Context) (*controller.Submission, error) {
	if template == "" {
		return nil, errors.New("examples/hello/task.manifest not found (run from the module root)")
	}
	return f.api.Submit(ctx, &controller.SubmitRequest{Archive: f.sum, Template: template})
}

// fill queues n tasks, submitting from 8 goroutines.
func (f *farm) fill(ctx context.Context, n int) error {
	var next atomic.Int64
	errs := make([]error, 8)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if _, err := f.submit(ctx); err != nil {
					errs[i] = err
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// resultText is the result manifest every simulated agent reports.
func result(task *manifest.Task, session string) *manifest.ResultRequest {
	ops := []manifest.OperationResult{}
	for _, op := range []string{"configure", "update", "test", "install"} {
		ops = append(ops, manifest.OperationResult{Operation: op, Status: manifest.StatusSuccess, Log: "$ sh ./" + op + ".sh\nok\n"})
	}
	return &manifest.ResultRequest{Session: session, Result: manifest.Result{
		Name: task.Name, Version: task.Version, Status: manifest.StatusSuccess, Results: ops}}
}

func taskRequest(name string) *manifest.TaskRequest {
	return &manifest.TaskRequest{Agent: name, ToolchainName: "default", ToolchainVersion: "1.0.0",
		Machines: []manifest.MachineHeader{{ID: "busybox-1.0", Name: "busybox", Summary: "busybox machine"}}}
}

// throughput measures the store alone, then the controller, on one
// database (the controller second, so that it works on the larger
// tables).
func throughput(ctx context.Context, c config, dsn string) (Round, error) {
	var tp Round
	f, err := startFarm(ctx, c, dsn, nil)
	if err != nil {
		return tp, err
	}
	defer f.stop()

	// The store alone: Claim and Complete, as the controller calls them.
	if err := f.fill(ctx, c.tasks); err != nil {
		return tp, err
	}
	rr := result(&manifest.Task{Name: "hello", Version: "1.0.0"}, "")
	var text bytes.Buffer
	if err := manifest.Serialize(&text, []manifest.Manifest{rr.Result.Manifest()}); err != nil {
		return tp, err
	}
	tp.StoreAlone, err = drain("store alone", c.agents, c.tasks, func(i int) (bool, error) {
		now := time.Now().UTC()
		session := newID()
		_, err := f.st.Claim(ctx, store.Claim{Agent: fmt.Sprintf("store-%d", i), Toolchain: "default",
			Machines: map[string]string{"busybox": "busybox"}, Session: session, Now: now, LeaseUntil: now.Add(time.Hour)})
		if errors.Is(err, store.ErrNoTask) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		_, err = f.st.Complete(ctx, store.Result{Session: session, Status: "success", Manifest: text.Bytes(), Now: time.Now().UTC()}, 3)
		return err == nil, err
	})
	if err != nil {
		return tp, err
	}

	// The controller: simulated agents over HTTP.
	if err := f.fill(ctx, c.tasks); err != nil {
		return tp, err
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: c.agents, MaxIdleConns: 2 * c.agents}}
	defer hc.CloseIdleConnections()
	cl := &ctlclient.Client{HTTP: hc, Timeout: 30 * time.Second}
	url := f.srv.URL()
	tp.Controller, err = drain("controller", c.agents, c.tasks, func(i int) (bool, error) {
		resp, err := cl.RequestTask(ctx, url, taskRequest(fmt.Sprintf("sim-%d", i)), 0)
		if err != nil || resp.Session == "" {
			return false, err
		}
		if err := cl.PostResult(ctx, resp.ResultURL, result(resp.Task, resp.Session)); err != nil {
			return false, err
		}
		return true, nil
	})
	if err != nil {
		return tp, err
	}
	q, err := f.st.Queue(ctx)
	if err == nil && q.Depth != 0 {
		err = fmt.Errorf("%d tasks left queued", q.Depth)
	}
	return tp, err
}

// drain runs one task at a time in each of n goroutines until step says
// there is none left, checks that want tasks were done, and returns the
// operations (two a task) per second; name is what it reports as.
func drain(name string, n, want int, step func(i int) (bool, error)) (float64, error) {
	var done atomic.Int64
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Go(func() {
			for {
				ok, err := step(i)
				if err != nil {
					errs[i] = err
					return
				}
				if !ok {
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	d := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	if got := int(done.Load()); got != want {
		return 0, fmt.Errorf("%s: %d tasks done, want %d", name, got, want)
	}
	rate := float64(2*want) / d.Seconds()
	fmt.Fprintf(os.Stderr, "  %s: %d tasks in %v: %.0f ops/s\n", name, want, d.Round(time.Millisecond), rate)
	return rate, nil
}

func newID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// latency times dispatch: ours (a real agent, long polling) and bbot's
// cadence (simulated, then real).
func latency(ctx context.Context, c config, dsn, work string) ([]Latency, error) {
	f, err := startFarm(ctx, c, dsn, func(o *controller.Options) { o.LongPoll = 30 * time.Second })
	if err != nil {
		return nil, err
	}
	defer f.stop()
	fmt.Fprintf(os.Stderr, "dispatch latency, long polling: %d submits to a real agent\n", c.latencyRuns)
	ours, err := latencyAgent(ctx, c, f, work)
	if err != nil {
		return nil, err
	}
	ls := []Latency{summarize("ours: real agent, long polling", ours, 0)}
	fmt.Fprintf(os.Stderr, "dispatch latency, bbot's cadence at %v: %d submits\n", c.bbotInterval, c.latencyRuns)
	sim, err := latencyBbot(ctx, f, c.bbotInterval, c.latencyRuns)
	if err != nil {
		return nil, err
	}
	l := summarize(fmt.Sprintf("bbot cadence, %v interval (simulated)", c.bbotInterval), sim, c.bbotInterval)
	l.Scaled = l.Median * (60 / c.bbotInterval.Seconds())
	ls = append(ls, l)
	if c.bbotReal > 0 {
		fmt.Fprintf(os.Stderr, "dispatch latency, bbot's cadence at 60s: %d submits\n", c.bbotReal)
		real, err := latencyBbot(ctx, f, 60*time.Second, c.bbotReal)
		if err != nil {
			return nil, err
		}
		ls = append(ls, summarize("bbot cadence, 60s interval (real)", real, 60*time.Second))
	}
	return ls, nil
}

// taskLog is a slog handler that reports when the agent logs "task" (it
// has a task and starts on it).
type taskLog struct{ got chan time.Time }

func (h taskLog) Enabled(context.Context, slog.Level) bool { return true }
func (h taskLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "task" {
		select {
		case h.got <- time.Now():
		default:
		}
	}
	return nil
}
func (h taskLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h taskLog) WithGroup(string) slog.Handler      { return h }

// latencyAgent runs a real agent (no VM: a fake machine and fake builds)
// with long polling and times runs submits, each after a random pause.
func latencyAgent(ctx context.Context, c config, f *farm, work string) ([]time.Duration, error) {
	dir, err := os.MkdirTemp(work, "agent-")
	if err != nil {
		return nil, err
	}
	mf := filepath.Join(dir, "machine.manifest")
	if err := os.WriteFile(mf, []byte(": 1\nid: busybox-1.0\nname: busybox\nsummary: busybox machine\n"), 0o644); err != nil {
		return nil, err
	}
	o := agent.DefaultOptions()
	o.Machines, o.TFTP = filepath.Join(dir, "machines"), filepath.Join(dir, "tftp")
	o.FakeMachine, o.FakeBuild, o.NoNetNS = mf, true, true
	got := make(chan time.Time, 1)
	a, err := agent.New(o, slog.New(taskLog{got}), io.Discard)
	if err != nil {
		return nil, err
	}
	actx, cancel := context.WithCancel(ctx)
	errc, stopped := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(stopped)
		errc <- fmt.Errorf("agent stopped: %v", a.Run(actx, []string{f.srv.URL()}))
	}()
	defer func() { cancel(); <-stopped }()
	time.Sleep(time.Second) // the agent's first request is held
	return timeSubmits(ctx, f, c.latencyRuns, func() time.Duration { return 200*time.Millisecond + mrand.N(800*time.Millisecond) },
		got, errc, time.Minute)
}

// latencyBbot simulates a bbot agent, which asks without long polling and
// sleeps interval between requests when there is no task, and times runs
// submits made at random points of its cycle.
func latencyBbot(ctx context.Context, f *farm, interval time.Duration, runs int) ([]time.Duration, error) {
	cl := &ctlclient.Client{HTTP: &http.Client{}, Timeout: 30 * time.Second}
	bctx, cancel := context.WithCancel(ctx)
	defer cancel()
	got := make(chan time.Time, 1)
	errc := make(chan error, 1)
	go func() {
		for bctx.Err() == nil {
			resp, err := cl.RequestTask(bctx, f.srv.URL(), taskRequest("bbot"), 0)
			if err != nil {
				if bctx.Err() == nil {
					errc <- err
				}
				return
			}
			if resp.Session == "" {
				select {
				case <-time.After(interval):
				case <-bctx.Done():
				}
				continue
			}
			got <- time.Now()
			if err := cl.PostResult(bctx, resp.ResultURL, result(resp.Task, resp.Session)); err != nil && bctx.Err() == nil {
				errc <- err
				return
			}
		}
	}()
	return timeSubmits(ctx, f, runs, func() time.Duration { return mrand.N(interval) }, got, errc, interval+time.Minute)
}

// timeSubmits submits runs tasks, each after a pause, and times each from
// the start of its submit to the time got reports; an error on errc, or
// no task taken within limit, ends it.
func timeSubmits(ctx context.Context, f *farm, runs int, pause func() time.Duration, got <-chan time.Time, errc <-chan error, limit time.Duration) ([]time.Duration, error) {
	var ds []time.Duration
	for range runs {
		time.Sleep(pause())
		start := time.Now()
		if _, err := f.submit(ctx); err != nil {
			return nil, err
		}
		select {
		case t := <-got:
			ds = append(ds, t.Sub(start))
		case err := <-errc:
			return nil, err
		case <-time.After(limit):
			return nil, fmt.Errorf("no agent took the task within %v", limit)
		}
	}
	return ds, nil
}

func summarize(name string, ds []time.Duration, interval time.Duration) Latency {
	l := Latency{Case: name, Interval: interval.Seconds()}
	for _, d := range ds {
		l.Samples = append(l.Samples, math.Round(d.Seconds()*1e4)/1e4)
	}
	l.Min, l.Max, l.Median = slices.Min(l.Samples), slices.Max(l.Samples), median(l.Samples)
	return l
}

func median(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	if n := len(s); n%2 == 1 {
		return s[n/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func report(w io.Writer, r Results) {
	fmt.Fprintf(w, "Throughput, %d simulated agents, %d tasks, GOMAXPROCS %d (task claims plus result uploads per second; medians):\n\n", r.Agents, r.Tasks, r.CPUs)
	fmt.Fprintln(w, "| database | controller (HTTP) | store alone | controller ÷ store | goal | rounds: controller / store alone |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---|")
	for _, t := range r.Throughput {
		var rounds []string
		for _, x := range t.Rounds {
			rounds = append(rounds, fmt.Sprintf("%.0f / %.0f", x.Controller, x.StoreAlone))
		}
		fmt.Fprintf(w, "| %s | %.0f /s | %.0f /s | %.2f | ≥ %.0f /s | %s |\n", t.DB, t.Controller, t.StoreAlone, t.ControllerRatio, t.Goal, strings.Join(rounds, ", "))
	}
	if len(r.Latency) == 0 {
		return
	}
	fmt.Fprintln(w, "\nDispatch latency, submit to the agent starting the task:")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| case | runs | median | min | max | median scaled to 60 s |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|")
	for _, l := range r.Latency {
		scaled := ""
		if l.Scaled > 0 {
			scaled = fmt.Sprintf("%.1f s", l.Scaled)
		}
		fmt.Fprintf(w, "| %s | %d | %.3f s | %.3f s | %.3f s | %s |\n", l.Case, len(l.Samples), l.Median, l.Min, l.Max, scaled)
	}
	ours := r.Latency[0].Median
	fmt.Fprintln(w)
	for _, l := range r.Latency[1:] {
		base, how := l.Median, "median"
		if l.Scaled > 0 {
			base, how = l.Scaled, "median scaled to 60 s"
		}
		fmt.Fprintf(w, "Ratio, %s (%s) ÷ ours: %.0f×\n", l.Case, how, base/ours)
	}
}
