// Command realbuild builds real projects from Debian's source packages on
// the debian machine, end to end through the agent, as a new user would:
// GNU hello 2.10 (hello_2.10.orig.tar.gz) and zlib 1.2.13
// (zlib_1.2.13.dfsg.orig.tar.bz2), each a task whose steps are
// ./configure, make, make check and make install, with the orig tarball
// as the task's archive. Each project is built once per -cpus value (the
// agent's --cpu: one vCPU, and two under multi-threaded TCG), and every
// build must end in success with its four operations.
//
// It runs the programs a user runs: bin/buildfarm and buildfarm-worker
// are built into a temporary directory; `buildfarm image build --preset
// debian` makes the machine (debootstrap on the first run, cached);
// `buildfarm machine add` installs it in a fallback volume in the
// temporary directory; `buildfarm agent --fake-request TASK --dump-result
// --cpu N` bootstraps it (the first run) and performs each task, at the
// agent's defaults otherwise. The sources come from `apt-get source
// --download-only`, with a sources list of its own (deb-src for
// bookworm main) and its own apt state under the cache directory, so the
// host's apt configuration is not touched; a tarball already there is
// not downloaded again.
//
// Each operation's time is the worker's own (its progress report's
// duration, as the agent logs it); the task's time is the agent's run,
// from its start to its exit. The table goes to standard output and, as
// JSON, is added to the runs in -results (bench/realbuild/results.json).
//
// Run it from the module root, as root (network namespaces, the debian
// image's rootfs):
//
//	go run ./bench/realbuild [-projects hello,zlib] [-cpus 1,2]
//
// Under TCG it is slow: hello's configure takes minutes.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/cache"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// A project is a Debian source package whose orig tarball is built.
type project struct {
	name, pkg, version string
	orig               string // the orig tarball apt-get source fetches
	dir                string // its top directory
	configure          string // the configure step
}

var projects = map[string]project{
	"hello": {name: "hello", pkg: "hello", version: "2.10", orig: "hello_2.10.orig.tar.gz",
		dir: "hello-2.10", configure: "./configure --prefix=/build/install"},
	"zlib": {name: "zlib", pkg: "zlib", version: "1.2.13", orig: "zlib_1.2.13.dfsg.orig.tar.bz2",
		dir: "zlib-1.2.13.dfsg", configure: "./configure --prefix=/build/install"},
}

// The sources list realbuild gives apt-get: Debian's bookworm sources.
const sourcesList = "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main\n"

type config struct {
	projects []string
	cpus     []int
	results  string
	timeout  time.Duration
}

// A row is one build.
type row struct {
	Project    string           `json:"project"`
	CPUs       int              `json:"cpus"`
	Status     string           `json:"status"`
	Operations map[string]int64 `json:"operation_ns"` // the worker's time per operation
	TaskNS     int64            `json:"task_ns"`      // the agent's run, start to exit
	Start      string           `json:"start"`        // warm or cold
}

func main() {
	var c config
	var ps, cs string
	flag.StringVar(&ps, "projects", "hello,zlib", "projects to build: hello, zlib")
	flag.StringVar(&cs, "cpus", "1,2", "vCPUs per VM to build each project with (the agent's --cpu)")
	flag.StringVar(&c.results, "results", filepath.Join("bench", "realbuild", "results.json"), "JSON `file` to write the table to (empty: none)")
	flag.DurationVar(&c.timeout, "build-timeout", 90*time.Minute, "the agent's --build-timeout")
	flag.Parse()
	for _, p := range strings.Split(ps, ",") {
		if _, ok := projects[p]; !ok {
			fmt.Fprintf(os.Stderr, "bench/realbuild: -projects: unknown project %q (have hello, zlib)\n", p)
			os.Exit(2)
		}
		c.projects = append(c.projects, p)
	}
	for _, s := range strings.Split(cs, ",") {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "bench/realbuild: -cpus: %q is not a positive number\n", s)
			os.Exit(2)
		}
		c.cpus = append(c.cpus, n)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, c)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/realbuild:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, c config) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root: network namespaces and the debian image's rootfs")
	}
	srcDir := filepath.Join(cache.Dir(), "realbuild")
	tmp, err := os.MkdirTemp("/var/tmp", "bench-realbuild-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bf, worker := filepath.Join(tmp, "bin", "buildfarm"), filepath.Join(tmp, "bin", "buildfarm-worker")
	if err := testenv.GoBuild(ctx, bf, "./cmd/buildfarm", ""); err != nil {
		return err
	}
	if err := testenv.BuildWorker(ctx, worker, arch.X8664); err != nil {
		return err
	}
	if err := fetchSources(ctx, srcDir, c.projects); err != nil {
		return err
	}
	loadStart, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("load average at start %s", loadStart)

	img, machines, tftp := filepath.Join(tmp, "debian"), filepath.Join(tmp, "machines"), filepath.Join(tmp, "tftp")
	t0 := time.Now()
	if err := proc.Run(ctx, nil, bf, "image", "build", "--preset", "debian", "--worker", worker, "--out", img); err != nil {
		return err
	}
	fmt.Printf("image build --preset debian: %s\n", time.Since(t0).Round(time.Second))
	if err := proc.Run(ctx, nil, bf, "machine", "add", "--machines", machines, "--name", "debian", img); err != nil {
		return err
	}

	var rows []row
	for _, n := range c.cpus {
		for _, name := range c.projects {
			p := projects[name]
			r, err := build(ctx, c, bf, tmp, machines, tftp, filepath.Join(srcDir, p.orig), p, n)
			if err != nil {
				return fmt.Errorf("%s with %d vCPUs: %w", name, n, err)
			}
			rows = append(rows, r)
			fmt.Printf("%-6s %d vCPU  %-8s  configure %8s  make %8s  check %8s  install %8s  task %8s  (%s start)\n",
				r.Project, r.CPUs, r.Status, dur(r.Operations["configure"]), dur(r.Operations["update"]),
				dur(r.Operations["test"]), dur(r.Operations["install"]), dur(r.TaskNS), r.Start)
		}
	}
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("load average at end %s", load)
	if c.results != "" {
		if err := appendResults(c.results, resultRun{Measured: time.Now().UTC().Format(time.RFC3339),
			Accel: "agent default (TCG here)", LoadStart: strings.TrimSpace(string(loadStart)),
			LoadEnd: strings.TrimSpace(string(load)), Rows: rows}); err != nil {
			return err
		}
	}
	for _, r := range rows {
		if r.Status != "success" {
			return fmt.Errorf("%s with %d vCPUs: %s", r.Project, r.CPUs, r.Status)
		}
	}
	return nil
}

// resultRun is one run of the harness in the results file, which keeps
// every run (newest last), so that runs in another order or under another
// load can be compared.
type resultRun struct {
	Measured  string `json:"measured"`
	Accel     string `json:"accel"`
	LoadStart string `json:"load_average_start"`
	LoadEnd   string `json:"load_average_end"`
	Rows      []row  `json:"rows"`
}

// appendResults adds r to the runs in the JSON file path.
func appendResults(path string, r resultRun) error {
	var f struct {
		Runs []resultRun `json:"runs"`
	}
	if b, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(b, &f); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	f.Runs = append(f.Runs, r)
	return testenv.WriteResults(path, f)
}

func dur(ns int64) string { return time.Duration(ns).Round(100 * time.Millisecond).String() }

// fetchSources puts each project's orig tarball in dir with apt-get source
// --download-only, under an apt configuration of its own in dir/apt.
func fetchSources(ctx context.Context, dir string, names []string) error {
	var pkgs []string
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(dir, projects[n].orig)); err != nil {
			pkgs = append(pkgs, projects[n].pkg+"="+debianVersion[n])
		}
	}
	if len(pkgs) == 0 {
		return nil
	}
	aptDir := filepath.Join(dir, "apt")
	for _, d := range []string{"lists/partial", "parts", "cache/archives/partial"} {
		if err := os.MkdirAll(filepath.Join(aptDir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(aptDir, "sources.list"), []byte(sourcesList), 0o644); err != nil {
		return err
	}
	opts := []string{
		"-o", "Dir::Etc::SourceList=" + filepath.Join(aptDir, "sources.list"),
		"-o", "Dir::Etc::SourceParts=" + filepath.Join(aptDir, "parts"),
		"-o", "Dir::State::Lists=" + filepath.Join(aptDir, "lists"),
		"-o", "Dir::Cache=" + filepath.Join(aptDir, "cache"),
		"-o", "APT::Sandbox::User=root",
	}
	if err := proc.Run(ctx, nil, "apt-get", append(opts, "-q", "update")...); err != nil {
		return err
	}
	cmd := proc.Command(ctx, "apt-get", append(append(opts, "-q", "source", "--download-only"), pkgs...)...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get source %s: %w: %s", strings.Join(pkgs, " "), err, out)
	}
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(dir, projects[n].orig)); err != nil {
			return fmt.Errorf("apt-get source %s: no %s: %w", projects[n].pkg, projects[n].orig, err)
		}
	}
	return nil
}

// The Debian versions of the source packages (bookworm's).
var debianVersion = map[string]string{"hello": "2.10-3", "zlib": "1:1.2.13.dfsg-1"}

// guestLine matches the agent's log of the worker's progress at an
// operation's end.
var guestLine = regexp.MustCompile(`msg=guest .*step=(\S+) state=finished status=(\S+) duration=(\S+)`)

// build runs the agent on p's task with cpus vCPUs and returns the row.
func build(ctx context.Context, c config, bf, tmp, machines, tftp, orig string, p project, cpus int) (row, error) {
	r := row{Project: p.name, CPUs: cpus, Operations: map[string]int64{}}
	task := filepath.Join(tmp, "task-"+p.name)
	if err := os.MkdirAll(task, 0o755); err != nil {
		return r, err
	}
	b, err := os.ReadFile(orig)
	if err != nil {
		return r, err
	}
	if err := os.WriteFile(filepath.Join(task, filepath.Base(orig)), b, 0o644); err != nil {
		return r, err
	}
	in := "cd " + p.dir + " && "
	m := manifest.Manifest{
		{Name: "", Value: "1"},
		{Name: "name", Value: p.name},
		{Name: "version", Value: p.version},
		{Name: "repository-url", Value: "https://deb.debian.org/debian/pool/main/"},
		{Name: "machine", Value: "debian"},
		{Name: "target", Value: "x86_64-linux-gnu"},
		{Name: "buildfarm-archive", Value: filepath.Base(orig)},
		{Name: "buildfarm-configure", Value: in + p.configure},
		{Name: "buildfarm-update", Value: in + "make"},
		{Name: "buildfarm-test", Value: in + "make check"},
		{Name: "buildfarm-install", Value: in + "make install"},
	}
	tm := filepath.Join(task, "task.manifest")
	if err := manifest.WriteFile(tm, []manifest.Manifest{m}); err != nil {
		return r, err
	}
	logf, err := os.Create(filepath.Join(tmp, fmt.Sprintf("agent-%s-%d.log", p.name, cpus)))
	if err != nil {
		return r, err
	}
	defer logf.Close()
	cmd := proc.Command(ctx, bf, "agent", "--machines", machines, "--tftp", tftp,
		"--registry", filepath.Join(tmp, "vms"), "--console-links", filepath.Join(tmp, "console"),
		"--cpu", strconv.Itoa(cpus), "--build-timeout", c.timeout.String(),
		"--fake-request", tm, "--dump-result")
	var out strings.Builder
	cmd.Stdout = &out
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(io.TeeReader(pr, logf))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if g := guestLine.FindStringSubmatch(sc.Text()); g != nil {
				if d, err := time.ParseDuration(g[3]); err == nil {
					r.Operations[g[1]] = int64(d)
				}
				fmt.Printf("  %s %d vCPU: %s %s in %s\n", p.name, cpus, g[1], g[2], g[3])
			}
		}
		io.Copy(io.Discard, pr)
	}()
	start := time.Now()
	err = cmd.Run()
	r.TaskNS = int64(time.Since(start))
	pw.Close()
	<-scanned
	if err != nil {
		return r, fmt.Errorf("agent: %w (log: %s)", err, logf.Name())
	}
	ms, err := manifest.Parse(strings.NewReader(out.String()), "dumped result")
	if err != nil || ms.Len() != 1 {
		return r, fmt.Errorf("agent's result: %v:\n%s", err, out.String())
	}
	res, err := manifest.ParseResult(ms.Manifest(0), "dumped result", manifest.Lenient)
	if err != nil {
		return r, err
	}
	r.Status = res.Status.String()
	for _, p := range ms.Manifest(0) {
		if p.Name == "buildfarm-start" {
			r.Start = p.Value
		}
	}
	if res.Status != manifest.StatusSuccess || len(res.Results) != 4 {
		for _, op := range res.Results {
			fmt.Printf("--- %s %s:\n%s\n", op.Operation, op.Status, tail(op.Log, 40))
		}
		r.Status = fmt.Sprintf("%s with %d operations", res.Status, len(res.Results))
	}
	return r, nil
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
