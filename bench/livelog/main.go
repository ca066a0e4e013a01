// Command livelog measures a build's live log: the time from a line
// written in the guest to the same line at the controller's API, against
// what a user gets without a live log, the line in the stored result.
//
//	go run ./bench/livelog [-runs 3] [-lines 30] [-interval 300ms]
//	    [-poll 10ms] [-accel tcg] [-start auto] [-json bench/livelog/results.json]
//
// The farm is real and at its defaults, as `buildfarm up` runs it: a
// controller (package controller in this process, on SQLite, listening on
// loopback), an agent (package agent in this process, at its defaults:
// one instance, --start auto, so tasks run in VMs restored from the warm
// state it saves after its bootstrap) and the busybox machine (`image
// build --preset busybox`, the worker built CGO_ENABLED=0), bootstrapped by
// the agent before the first task. Each run submits examples/hello through
// the API with its update step replaced by one that writes -lines lines,
// -interval apart, each both to the serial console and to its standard
// output, which the worker sends on as the live log.
//
// The guest's clock is no reference for the host's (a cold-booted guest
// has the RTC's, to the second), so the reference is on the host: QEMU
// writes what the guest sends to its serial port into the VM's serial log
// file as it comes, and the harness reads that file every 2 ms, noting
// when each line appears. The step writes a line to the serial port
// first and to its output right after, so the reference is, if anything,
// early. The steps run as an unprivileged user, and the serial port's
// device is root's (mode 0600); the harness's machine has one file more
// than the shipped one, an rc.d hook that makes the port writable by all
// (-serial names it). Nothing else differs.
//
// Measured for each line, on the host's clock:
//
//   - live (at the agent): when the agent's TFTP server has received the
//     live chunk holding the line's end (the worker sends what it has
//     every 200 ms; the agent logs each upload as it ends, and forwards
//     each chunk as one, in order, so the controller's chunks say which
//     upload held a line), minus the line's appearance in the serial log;
//   - live (API): when a poll of GET /api/v1/builds/ID/log?after=N every
//     -poll first returns the line, minus its appearance in the serial log;
//   - live (stored): the stored chunk's time (the API's "at"), minus the
//     same: the API's latency without the poll's;
//   - baseline (result): the task's finish time (the result stored, the
//     API's "finished"), minus the same: when a user without a live log
//     could first read the line;
//   - the guest's side, from the step's write to the serial log: the
//     appearance minus the guest's clock when the step wrote the line
//     ($EPOCHREALTIME). The worker of a restored VM (warm start) sets the
//     guest's clock from the host's, but the guest's clock then runs at
//     its own rate (under TCG, several per cent off the host's, from the
//     kernel's calibration under load), so that difference is mostly the
//     clock's drift, not the write's cost. What the harness reports is
//     each run's straight-line fit of appearance on guest time: its slope
//     (the guest clock's rate), its offset at the first line, and the
//     lines' distance from the fit, which bounds how much the time from
//     write to serial log varies from line to line.
//
// Each run's result must be a success whose update log holds every line.
// It prints the figures and writes them to -json.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/buildfarm/buildfarm/internal/agent"
	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/archive"
	"github.com/buildfarm/buildfarm/internal/cache"
	"github.com/buildfarm/buildfarm/internal/controller"
	"github.com/buildfarm/buildfarm/internal/image"
	"github.com/buildfarm/buildfarm/internal/machine"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/store"
	"github.com/buildfarm/buildfarm/internal/testenv"
	"github.com/buildfarm/buildfarm/internal/worker"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench/livelog: %v\n", err)
		os.Exit(1)
	}
}

type config struct {
	runs, lines    int
	interval, poll time.Duration
	accel, start   string
	serial         string
	json           string
	verbose        bool
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fl := flag.NewFlagSet("livelog", flag.ContinueOnError)
	var c config
	fl.IntVar(&c.runs, "runs", 3, "tasks, each in a VM of its own")
	fl.IntVar(&c.lines, "lines", 30, "lines the step writes in each task")
	fl.DurationVar(&c.interval, "interval", 300*time.Millisecond, "pause between the lines (the guest's sleep)")
	fl.DurationVar(&c.poll, "poll", 10*time.Millisecond, "how often the harness polls the controller's API for the live log")
	fl.StringVar(&c.accel, "accel", "tcg", "the agent's accelerator: auto, kvm or tcg")
	fl.StringVar(&c.start, "start", agent.DefaultOptions().Start, "the agent's --start: auto (warm where it can), warm or cold")
	fl.StringVar(&c.serial, "serial", "/dev/ttyS0", "the guest's serial console device, written by the step")
	fl.StringVar(&c.json, "json", filepath.Join("bench", "livelog", "results.json"), "`file` to write the results to as JSON (empty: none)")
	fl.BoolVar(&c.verbose, "v", false, "log the controller to stderr")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if c.runs < 1 || c.lines < 1 || c.interval < 0 || c.poll <= 0 {
		return errors.New("-runs and -lines must be positive, -interval not negative, -poll positive")
	}
	if !regexp.MustCompile(`^/dev/[A-Za-z0-9]+$`).MatchString(c.serial) {
		return fmt.Errorf("-serial %q: want a device such as /dev/ttyS0", c.serial)
	}
	k, err := cache.GuestKernel()
	if err != nil {
		return fmt.Errorf("guest kernel (scripts/deps fetches it): %w", err)
	}
	tmpl, err := os.ReadFile(filepath.Join("examples", "hello", "task.manifest"))
	if err != nil {
		return fmt.Errorf("examples/hello (run from the module root): %w", err)
	}
	tmp, err := os.MkdirTemp("", "bench-livelog-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	res := Results{Measured: time.Now().UTC().Format(time.RFC3339), CPUs: runtime.NumCPU(), Kernel: k.Version,
		Accel: c.accel, Start: c.start, RAM: agent.DefaultOptions().MemoryMB, Lines: c.lines,
		IntervalMS: ms(c.interval), PollMS: ms(c.poll), LoadBefore: testenv.LoadAverage()}
	fmt.Fprintf(out, "kernel %s, accel %s, --start %s, %d runs of %d lines %v apart, API polled every %v, load average %s\n",
		k.Version, c.accel, c.start, c.runs, c.lines, c.interval, c.poll, res.LoadBefore)

	f, err := startFarm(ctx, c, tmp)
	if err != nil {
		return err
	}
	defer f.stop()
	var packed bytes.Buffer
	if err := archive.Pack(&packed, filepath.Join("examples", "hello"), nil); err != nil {
		return err
	}
	ai, err := f.api.PutArchive(ctx, packed.Bytes())
	if err != nil {
		return err
	}
	for i := range c.runs {
		r, err := f.measure(ctx, c, ai.SHA256, string(tmpl))
		if err != nil {
			return fmt.Errorf("run %d: %w (agent log: %s)", i+1, err, f.tail())
		}
		r.Load = testenv.LoadAverage()
		res.Runs = append(res.Runs, r)
		fmt.Fprintf(out, "run %d: task %d, %s start, %s; live (API) median %.0f ms, max %.0f ms; result %.1f s after the first line; load %s\n",
			i+1, r.Task, r.Start, r.Status, median(col(r.Lines, lineAPI)), slices.Max(col(r.Lines, lineAPI)),
			r.Lines[0].ResultMS/1000, r.Load)
	}
	res.LoadAfter = testenv.LoadAverage()
	var all []Line
	for _, r := range res.Runs {
		all = append(all, r.Lines...)
	}
	res.Agent = summarize(col(all, func(l Line) float64 { return l.AgentMS }))
	res.Live = summarize(col(all, lineAPI))
	res.Stored = summarize(col(all, func(l Line) float64 { return l.StoredMS }))
	res.Result = summarize(col(all, func(l Line) float64 { return l.ResultMS }))
	res.GuestJitter = summarize(col(all, func(l Line) float64 { return math.Abs(l.FitMS) }))
	report(out, res)
	if c.json == "" {
		return nil
	}
	return testenv.WriteResults(c.json, res)
}

// Results are what -json holds. Times are in milliseconds.
type Results struct {
	Measured   string  `json:"measured"`
	CPUs       int     `json:"cpus"`
	Kernel     string  `json:"kernel"`
	Accel      string  `json:"accel"`
	Start      string  `json:"start_option"`
	RAM        int     `json:"ram_mib"`
	Lines      int     `json:"lines_per_run"`
	IntervalMS float64 `json:"interval_ms"`
	PollMS     float64 `json:"api_poll_ms"`
	LoadBefore string  `json:"load_average_before"`
	LoadAfter  string  `json:"load_average_after"`
	// Over every line of every run.
	Agent  Summary `json:"live_at_agent_ms"`
	Live   Summary `json:"live_api_ms"`
	Stored Summary `json:"live_stored_ms"`
	Result Summary `json:"baseline_result_ms"`
	// The lines' distance from their run's fit of serial appearance on
	// guest time (absolute values).
	GuestJitter Summary `json:"guest_write_to_serial_jitter_ms"`
	Runs        []Run   `json:"runs"`
}

// Summary is a distribution's median, 90th percentile (nearest rank),
// minimum and maximum.
type Summary struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	P90    float64 `json:"p90"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// Run is one task.
type Run struct {
	Task   int64  `json:"task"`
	Start  string `json:"start"` // how its VM started: warm or cold
	Status string `json:"status"`
	Load   string `json:"load_average_after"`
	// The fit of serial appearance (host) on guest time: host seconds a
	// guest second, and the appearance minus the guest's time at the
	// first line.
	GuestRate   float64 `json:"guest_clock_host_s_per_guest_s"`
	GuestOffset float64 `json:"guest_clock_offset_first_line_ms"`
	Lines       []Line  `json:"lines"`
}

// Line is one line's latencies from its appearance in the serial log.
type Line struct {
	N        int     `json:"n"`
	AgentMS  float64 `json:"live_at_agent_ms"`
	APIMS    float64 `json:"live_api_ms"`
	StoredMS float64 `json:"live_stored_ms"`
	ResultMS float64 `json:"baseline_result_ms"`
	// GuestMS is the appearance minus the guest's time in the line;
	// FitMS the appearance minus the run's fit at that guest time.
	GuestMS float64 `json:"serial_minus_guest_clock_ms"`
	FitMS   float64 `json:"serial_minus_fit_ms"`
}

func lineAPI(l Line) float64 { return l.APIMS }

func col(ls []Line, f func(Line) float64) []float64 {
	xs := make([]float64, len(ls))
	for i, l := range ls {
		xs[i] = f(l)
	}
	return xs
}

func summarize(xs []float64) Summary {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	us := func(x float64) float64 { return math.Round(x*1000) / 1000 }
	return Summary{N: n, Median: us(median(s)), P90: us(s[int(math.Ceil(0.9*float64(n)))-1]), Min: us(s[0]), Max: us(s[n-1])}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// ms is d in milliseconds, to the microsecond.
func ms(d time.Duration) float64 {
	return float64(d.Round(time.Microsecond)) / float64(time.Millisecond)
}

// farm is the controller and the agent, serving.
type farm struct {
	api      *controller.APIClient
	base     string
	tftp     string
	agentLog string
	uploads  uploads
	stop     func()
}

const buildtab = "busybox* busybox x86_64-linux-gnu default\n"

// hook is the rc.d hook of the harness's machine: the steps' user may
// write to the serial console (%s: the device).
const hook = "#!/bin/sh\n# bench/livelog: the steps may write to the serial console, the harness's reference.\nchmod a+w %s\n"

// startFarm builds the worker and the busybox machine, and starts the
// controller and the agent in this process.
func startFarm(ctx context.Context, c config, tmp string) (*farm, error) {
	workerBin := filepath.Join(tmp, "buildfarm-worker")
	if err := testenv.BuildWorker(ctx, workerBin, arch.X8664); err != nil {
		return nil, err
	}
	hookFile := filepath.Join(tmp, "50-livelog-bench")
	if err := os.WriteFile(hookFile, fmt.Appendf(nil, hook, c.serial), 0o755); err != nil {
		return nil, err
	}
	img := filepath.Join(tmp, "image")
	if _, err := image.Build(ctx, image.Options{Preset: "busybox", Out: img, Worker: workerBin,
		Add: []image.Add{{Src: hookFile, Dst: "etc/buildfarm/rc.d/50-livelog-bench"}}}); err != nil {
		return nil, err
	}
	machines := filepath.Join(tmp, "machines")
	v, err := (&machine.Store{Dir: machines}).Volume(machine.DefaultVolume, true)
	if err != nil {
		return nil, err
	}
	if _, err := v.Add(ctx, "busybox", machine.Source{Dir: img}); err != nil {
		return nil, err
	}

	st, err := store.Open(ctx, filepath.Join(tmp, "controller.db"), nil)
	if err != nil {
		return nil, err
	}
	co := controller.DefaultOptions()
	co.Listen = "127.0.0.1:0"
	if co.Buildtab, err = controller.ParseBuildtab(strings.NewReader(buildtab), "buildtab"); err != nil {
		st.Close()
		return nil, err
	}
	clog := slog.New(slog.DiscardHandler)
	if c.verbose {
		clog = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	srv, err := controller.New(st, co, clog)
	if err == nil {
		err = srv.Listen()
	}
	if err != nil {
		st.Close()
		return nil, err
	}
	f := &farm{base: srv.URL(), tftp: filepath.Join(tmp, "tftp"), agentLog: filepath.Join(tmp, "agent.log")}
	if f.api, err = controller.NewAPIClient(srv.URL(), "", nil); err != nil {
		st.Close()
		return nil, err
	}
	lf, err := os.Create(f.agentLog)
	if err != nil {
		st.Close()
		return nil, err
	}
	// The agent as up runs it, its paths in tmp.
	o := agent.DefaultOptions()
	o.Machines, o.TFTP = machines, f.tftp
	o.Registry, o.ConsoleLinks = filepath.Join(tmp, "vms"), filepath.Join(tmp, "consoles")
	o.Accel, o.Start = c.accel, c.start
	o.BuildStartup, o.BuildTimeout = 2*time.Minute, 10*time.Minute
	o.BootstrapStartup, o.BootstrapTimeout = 2*time.Minute, 10*time.Minute
	f.uploads = uploads{slog.NewTextHandler(lf, &slog.HandlerOptions{Level: slog.LevelDebug}), &sync.Mutex{}, &[]upload{}}
	a, err := agent.New(o, slog.New(f.uploads), io.Discard)
	if err != nil {
		lf.Close()
		st.Close()
		return nil, err
	}
	fctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(fctx) })
	wg.Go(func() {
		if err := a.Run(fctx, []string{srv.URL()}); err != nil && fctx.Err() == nil {
			fmt.Fprintf(os.Stderr, "bench/livelog: agent: %v\n", err)
		}
	})
	f.stop = func() { cancel(); wg.Wait(); lf.Close(); st.Close() }
	return f, nil
}

// tail is the agent log's last lines, for an error.
func (f *farm) tail() string {
	b, _ := os.ReadFile(f.agentLog)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return f.agentLog + ", ending:\n" + strings.Join(lines[max(0, len(lines)-30):], "\n")
}

// seen is when a line was seen on the host, and the guest's clock in it.
type seen struct {
	at    time.Time
	guest float64 // seconds since the epoch, the guest's
}

// measure submits one task whose update step writes c.lines lines, and
// times each line's way to the serial log, the API and the result.
func (f *farm) measure(ctx context.Context, c config, sum, tmpl string) (Run, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	token := make([]byte, 4)
	rand.Read(token)
	tok := hex.EncodeToString(token)
	// One write a line to each: the line is stamped with the guest's
	// clock, then written to the serial port, then to the output.
	step := fmt.Sprintf(`buildfarm-update: exec 3>%s; i=1; while [ $i -le %d ]; do l="livelog-bench %s $i $EPOCHREALTIME"; echo "$l" >&3; echo "$l"; i=$((i+1)); sleep %s; done; exec 3>&-; sh ./build.sh`,
		c.serial, c.lines, tok, strconv.FormatFloat(c.interval.Seconds(), 'f', -1, 64))
	text := regexp.MustCompile(`(?m)^buildfarm-update:.*$`).ReplaceAllLiteralString(tmpl, step)
	lineRE := regexp.MustCompile(`livelog-bench ` + tok + ` (\d+) (\d+\.\d+)`)

	serial := newSerialWatch(f.tftp, lineRE)
	defer serial.close()
	f.uploads.take() // the runs are one at a time: what came before is not this task's
	sub, err := f.api.Submit(ctx, &controller.SubmitRequest{Archive: sum, Template: text, Submitter: "bench/livelog"})
	if err != nil {
		return Run{}, err
	}
	id := sub.Tasks[0].ID
	api := map[int]time.Time{}    // line → when a poll first returned it
	stored := map[int]time.Time{} // line → the stored chunk's time
	chunk := map[int]int{}        // line → the index of the chunk that ended it, among all
	var update strings.Builder    // the update operation's live log
	done := 0                     // bytes of update already parsed into lines
	after := int64(0)
	chunks := 0 // of every operation
	for {
		l, err := liveLog(ctx, f.base, id, after)
		if err != nil {
			return Run{}, err
		}
		now := time.Now()
		for _, ch := range l.Chunks {
			after = ch.ID
			chunks++
			if ch.Operation != "update" {
				continue
			}
			if ch.Offset != int64(update.Len()) {
				return Run{}, fmt.Errorf("task %d: live chunk %d at offset %d, want %d (a gap)", id, ch.ID, ch.Offset, update.Len())
			}
			update.WriteString(ch.Text)
			for {
				rest := update.String()[done:]
				nl := strings.IndexByte(rest, '\n')
				if nl < 0 {
					break
				}
				if m := lineRE.FindStringSubmatch(rest[:nl]); m != nil {
					n, _ := strconv.Atoi(m[1])
					if _, ok := api[n]; !ok {
						api[n], stored[n], chunk[n] = now, ch.At, chunks-1
					}
				}
				done += nl + 1
			}
		}
		if l.Done {
			break
		}
		select {
		case <-ctx.Done():
			return Run{}, fmt.Errorf("task %d: %w (%d lines at the API)", id, ctx.Err(), len(api))
		case <-time.After(c.poll):
		}
	}
	t, err := f.api.Task(ctx, id)
	if err != nil {
		return Run{}, err
	}
	r := Run{Task: id, Status: t.Status}
	if t.Status != manifest.StatusSuccess.String() || t.Finished == nil {
		return r, fmt.Errorf("task %d ended %s (%s), want success", id, t.Status, t.Reason)
	}
	res, err := f.api.ParsedResult(ctx, id)
	if err != nil {
		return r, err
	}
	r.Start = res.Start
	var updateLog string
	for _, op := range res.Results {
		if op.Operation == "update" {
			updateLog = op.Log
		}
	}
	ser := serial.close()
	// The agent forwards each chunk it receives as one, in order: the
	// controller's k-th chunk of the task is the k-th the agent received.
	ups := f.uploads.take()
	if len(ups) != chunks {
		return r, fmt.Errorf("task %d: the agent received %d live chunks, and the controller has %d", id, len(ups), chunks)
	}
	var guest, host []float64 // seconds from the first line's
	for n := 1; n <= c.lines; n++ {
		s, ok := ser[n]
		switch {
		case !ok:
			return r, fmt.Errorf("task %d: line %d not in the serial log", id, n)
		case api[n].IsZero():
			return r, fmt.Errorf("task %d: line %d never at the API", id, n)
		case !strings.Contains(updateLog, fmt.Sprintf("livelog-bench %s %d ", tok, n)):
			return r, fmt.Errorf("task %d: line %d not in the result's update log", id, n)
		}
		r.Lines = append(r.Lines, Line{N: n, AgentMS: ms(ups[chunk[n]].at.Sub(s.at)), APIMS: ms(api[n].Sub(s.at)), StoredMS: ms(stored[n].Sub(s.at)),
			ResultMS: ms(t.Finished.Sub(s.at)), GuestMS: ms(s.at.Sub(time.UnixMicro(int64(math.Round(s.guest * 1e6)))))})
		guest = append(guest, s.guest-ser[1].guest)
		host = append(host, s.at.Sub(ser[1].at).Seconds())
	}
	a, b := fit(guest, host)
	r.GuestRate, r.GuestOffset = math.Round(b*1e6)/1e6, math.Round((r.Lines[0].GuestMS+a*1000)*1000)/1000
	for i := range r.Lines {
		r.Lines[i].FitMS = math.Round((host[i]-(a+b*guest[i]))*1e6) / 1000
	}
	return r, nil
}

// fit is the least-squares line y = a + b x.
func fit(x, y []float64) (a, b float64) {
	n := float64(len(x))
	var sx, sy, sxx, sxy float64
	for i := range x {
		sx, sy, sxx, sxy = sx+x[i], sy+y[i], sxx+x[i]*x[i], sxy+x[i]*y[i]
	}
	if d := n*sxx - sx*sx; d != 0 {
		b = (n*sxy - sx*sy) / d
	} else {
		b = 1
	}
	return (sy - b*sx) / n, b
}

func liveLog(ctx context.Context, base string, id, after int64) (*controller.LiveLog, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/api/v1/builds/%d/log?after=%d", base, id, after), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("live log of task %d: %s: %s", id, resp.Status, b)
	}
	var l controller.LiveLog
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("live log of task %d: %w", id, err)
	}
	return &l, nil
}

// serialWatch reads the serial logs of the VMs under an agent's TFTP
// directory (<tftp>/<instance>/<slot>-<name>/vm/serial.log) every 2 ms and
// notes when each line matching re first appears (its newline), with the
// guest's time it carries.
type serialWatch struct {
	stop, done chan struct{}
	lines      map[int]seen
}

func newSerialWatch(tftp string, re *regexp.Regexp) *serialWatch {
	w := &serialWatch{stop: make(chan struct{}), done: make(chan struct{}), lines: map[int]seen{}}
	type file struct {
		f   *os.File
		buf []byte
	}
	files := map[string]*file{}
	buf := make([]byte, 64<<10)
	go func() {
		defer close(w.done)
		defer func() {
			for _, fl := range files {
				fl.f.Close()
			}
		}()
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for i := 0; ; i++ {
			if i%25 == 0 { // new VMs
				logs, _ := filepath.Glob(filepath.Join(tftp, "*", "*", "vm", "serial.log"))
				for _, p := range logs {
					if files[p] == nil {
						if f, err := os.Open(p); err == nil {
							files[p] = &file{f: f}
						}
					}
				}
			}
			for _, fl := range files {
				n, _ := fl.f.Read(buf)
				if n == 0 {
					continue
				}
				now := time.Now()
				fl.buf = append(fl.buf, buf[:n]...)
				for {
					nl := bytes.IndexByte(fl.buf, '\n')
					if nl < 0 {
						break
					}
					if m := re.FindSubmatch(fl.buf[:nl]); m != nil {
						n, _ := strconv.Atoi(string(m[1]))
						g, _ := strconv.ParseFloat(string(m[2]), 64)
						if _, ok := w.lines[n]; !ok {
							w.lines[n] = seen{at: now, guest: g}
						}
					}
					fl.buf = fl.buf[nl+1:]
				}
			}
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
		}
	}()
	return w
}

// close stops the watch and returns what it saw; it may be called again.
func (w *serialWatch) close() map[int]seen {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
	return w.lines
}

// uploads is the agent's log handler: it passes each record on, and notes
// when the agent's TFTP server has received each live log chunk (its
// record "tftp: request" for a write of live-NNNNNN, logged as the upload
// ends; the agent reads and deletes the file at once, so it cannot be
// watched for).
type uploads struct {
	slog.Handler
	mu   *sync.Mutex
	seen *[]upload
}

// upload is a live log chunk the agent received.
type upload struct {
	file string
	at   time.Time
}

func (u uploads) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "tftp: request" {
		var op, file string
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "request" {
				for _, g := range a.Value.Resolve().Group() {
					switch g.Key {
					case "op":
						op = g.Value.String()
					case "file":
						file = strings.TrimPrefix(g.Value.String(), "/")
					}
				}
			}
			return true
		})
		if op == "write" && strings.HasPrefix(file, worker.LiveFilePrefix) {
			u.mu.Lock()
			*u.seen = append(*u.seen, upload{file: file, at: r.Time})
			u.mu.Unlock()
		}
	}
	return u.Handler.Handle(ctx, r)
}

func (u uploads) WithAttrs(as []slog.Attr) slog.Handler {
	return uploads{u.Handler.WithAttrs(as), u.mu, u.seen}
}

func (u uploads) WithGroup(g string) slog.Handler {
	return uploads{u.Handler.WithGroup(g), u.mu, u.seen}
}

// take returns the chunks received since the last take, in the order of
// their names (the worker's sequence numbers).
func (u uploads) take() []upload {
	u.mu.Lock()
	us := *u.seen
	*u.seen = nil
	u.mu.Unlock()
	slices.SortFunc(us, func(a, b upload) int { return strings.Compare(a.file, b.file) })
	return us
}

func report(w io.Writer, r Results) {
	fmt.Fprintf(w, "\n%d lines over %d runs (%d lines %v apart each), load average %s before, %s after\n\n",
		r.Live.N, len(r.Runs), r.Lines, time.Duration(r.IntervalMS*float64(time.Millisecond)), r.LoadBefore, r.LoadAfter)
	fmt.Fprintln(w, "| from the line in the serial log to | median | p90 | min | max |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|")
	row := func(name string, s Summary) {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", name, dur(s.Median), dur(s.P90), dur(s.Min), dur(s.Max))
	}
	row("live: its chunk received by the agent (the worker's flush, TFTP)", r.Agent)
	row("live: stored at the controller (the API's `at`)", r.Stored)
	row(fmt.Sprintf("live: the API (polled every %g ms)", r.PollMS), r.Live)
	row("baseline: the result stored (no live log)", r.Result)
	fmt.Fprintln(w)
	row("the guest's side: distance of the serial log's times from a straight fit on the guest's clock", r.GuestJitter)
	for i, run := range r.Runs {
		fmt.Fprintf(w, "run %d (%s start): the guest's clock ran at %.4f host seconds a second; at the first line the serial log was %s past it\n",
			i+1, run.Start, run.GuestRate, dur(run.GuestOffset))
	}
	verdict := "met"
	if r.Live.Median >= 1000 {
		verdict = "NOT met"
	}
	fmt.Fprintf(w, "\nlive (API) median %s: goal < 1 s: %s; the baseline's median is %.0f× it\n",
		dur(r.Live.Median), verdict, r.Result.Median/r.Live.Median)
}

// dur formats milliseconds.
func dur(x float64) string {
	if math.Abs(x) >= 1000 {
		return fmt.Sprintf("%.2f s", x/1000)
	}
	return fmt.Sprintf("%.0f ms", x)
}
