// Command tftp compares buildfarm's TFTP server and client with tftpd-hpa
// on loopback, in one run: a file of -size bytes is fetched by busybox's
// client from our server and from tftpd-hpa at blksize 1468 and 65464
// (lock-step: busybox knows no windowsize), and by our client from our
// server at blksize 1468 with windowsize 16, and at the worker's defaults
// (blksize 65464, lock-step). With -baseline, another buildfarm binary
// (an earlier commit's) serves too, and its server and client are timed
// in the same cases, interleaved. Each case runs -reps times,
// interleaved; the table shows the medians and the ratios, and goes, as
// JSON, to -results (bench/tftp/results.json).
//
// Run it from the module root, as root (tftpd-hpa's -u root):
//
//	go run ./bench/tftp [-reps 5] [-baseline OLD/buildfarm]
//
// It needs busybox and in.tftpd (Debian: busybox-static, tftpd-hpa) and
// builds cmd/buildfarm into a temporary directory.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

func main() {
	reps := flag.Int("reps", 5, "runs of each case; the median counts")
	size := flag.Int64("size", 64<<20, "file size in bytes")
	baseline := flag.String("baseline", "", "another buildfarm `binary` (an earlier commit's) to time beside ours")
	results := flag.String("results", filepath.Join("bench", "tftp", "results.json"), "JSON `file` for the table (empty: none)")
	flag.Parse()
	if err := run(context.Background(), *reps, *size, *baseline, *results); err != nil {
		fmt.Fprintln(os.Stderr, "bench/tftp:", err)
		os.Exit(1)
	}
}

// freePort returns a loopback address that was free a moment ago.
func freePort() (string, error) {
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.LocalAddr().String(), nil
}

// server is a TFTP server process.
type server struct {
	addr string
	cmd  *exec.Cmd
	done chan error
}

func startServer(ctx context.Context, name string, args ...string) (*server, error) {
	cmd := proc.Command(ctx, name, args...)
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	s := &server{cmd: cmd, done: make(chan error, 1)}
	go func() { s.done <- cmd.Wait() }()
	return s, nil
}

func (s *server) stop() {
	proc.KillGroup(s.cmd, 15)
	<-s.done
}

// waitReady fetches a small file until the server at addr answers.
func waitReady(ctx context.Context, bb, addr, dir string) error {
	host, port, _ := net.SplitHostPort(addr)
	for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(50 * time.Millisecond) {
		if proc.Run(ctx, nil, bb, "tftp", "-g", "-r", "ready", "-l", filepath.Join(dir, "ready"), host, port) == nil {
			return nil
		}
	}
	return fmt.Errorf("no TFTP server answers at %s", addr)
}

type benchCase struct {
	name string
	args func(out string) (string, []string)
}

func run(ctx context.Context, reps int, size int64, baseline, results string) error {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return err
	}
	tftpd, err := exec.LookPath("in.tftpd")
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "bench-tftp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	root, out := filepath.Join(dir, "root"), filepath.Join(dir, "out")
	for _, d := range []string{root, out} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	bf := filepath.Join(dir, "buildfarm")
	if err := testenv.GoBuild(ctx, bf, "./cmd/buildfarm", arch.Host().GOARCH()); err != nil {
		return err
	}
	want, err := makeFile(filepath.Join(root, "big"), size)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "ready"), []byte("ready"), 0o644); err != nil {
		return err
	}

	oursAddr, err := freePort()
	if err != nil {
		return err
	}
	ours, err := startServer(ctx, bf, "tftp", "serve", "--root", root, "--listen", oursAddr)
	if err != nil {
		return err
	}
	defer ours.stop()
	hpaAddr, err := freePort()
	if err != nil {
		return err
	}
	hpa, err := startServer(ctx, tftpd, "-L", "-a", hpaAddr, "-s", "-u", "root", root)
	if err != nil {
		return err
	}
	defer hpa.stop()
	addrs := []string{oursAddr, hpaAddr}
	var baseAddr string
	if baseline != "" {
		if baseAddr, err = freePort(); err != nil {
			return err
		}
		base, err := startServer(ctx, baseline, "tftp", "serve", "--root", root, "--listen", baseAddr)
		if err != nil {
			return err
		}
		defer base.stop()
		addrs = append(addrs, baseAddr)
	}
	for _, a := range addrs {
		if err := waitReady(ctx, bb, a, out); err != nil {
			return err
		}
	}

	busybox := func(addr string, blksize int) func(string) (string, []string) {
		host, port, _ := net.SplitHostPort(addr)
		return func(local string) (string, []string) {
			return bb, []string{"tftp", "-g", "-r", "big", "-l", local, "-b", strconv.Itoa(blksize), host, port}
		}
	}
	cases := []benchCase{
		{"busybox from tftpd-hpa, blksize 1468", busybox(hpaAddr, 1468)},
		{"busybox from ours, blksize 1468", busybox(oursAddr, 1468)},
		{"busybox from tftpd-hpa, blksize 65464", busybox(hpaAddr, 65464)},
		{"busybox from ours, blksize 65464", busybox(oursAddr, 65464)},
		{"ours from ours, blksize 1468, windowsize 16", func(local string) (string, []string) {
			return bf, []string{"tftp", "get", oursAddr, "big", local, "--blksize", "1468", "--windowsize", "16"}
		}},
		{"ours from ours, blksize 65464 (worker default)", func(local string) (string, []string) {
			return bf, []string{"tftp", "get", oursAddr, "big", local, "--blksize", "65464"}
		}},
	}
	if baseline != "" {
		cases = append(cases,
			benchCase{"busybox from baseline, blksize 1468", busybox(baseAddr, 1468)},
			benchCase{"busybox from baseline, blksize 65464", busybox(baseAddr, 65464)},
			benchCase{"baseline from baseline, blksize 1468, windowsize 16", func(local string) (string, []string) {
				return baseline, []string{"tftp", "get", baseAddr, "big", local, "--blksize", "1468", "--windowsize", "16"}
			}},
			benchCase{"baseline from baseline, blksize 65464 (worker default)", func(local string) (string, []string) {
				return baseline, []string{"tftp", "get", baseAddr, "big", local, "--blksize", "65464"}
			}},
		)
	}
	loadBefore := loadAvg()
	times := make([][]time.Duration, len(cases))
	for r := 0; r < reps; r++ {
		for i, c := range cases {
			local := filepath.Join(out, fmt.Sprintf("big-%d", i))
			os.Remove(local)
			name, args := c.args(local)
			start := time.Now()
			if err := proc.Run(ctx, nil, name, args...); err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			times[i] = append(times[i], time.Since(start))
			if err := check(local, want); err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			fmt.Fprintf(os.Stderr, "run %d: %-45s %v\n", r+1, c.name, times[i][r].Round(time.Millisecond))
		}
	}
	med := make([]time.Duration, len(cases))
	best := make([]time.Duration, len(cases))
	for i := range cases {
		slices.Sort(times[i])
		med[i] = times[i][len(times[i])/2]
		best[i] = times[i][0]
	}
	fmt.Printf("%d MiB over loopback, median of %d runs each (%s; load average before %s, after %s)\n\n",
		size>>20, reps, time.Now().UTC().Format("2006-01-02"), loadBefore, loadAvg())
	fmt.Println("| case | median | all runs |")
	fmt.Println("|---|---|---|")
	for i, c := range cases {
		var all []string
		for _, t := range times[i] {
			all = append(all, fmt.Sprintf("%.2f", t.Seconds()))
		}
		fmt.Printf("| %s | %.3f s | %s |\n", c.name, med[i].Seconds(), strings.Join(all, " "))
	}
	ratio := func(base, ours time.Duration) float64 { return base.Seconds() / ours.Seconds() }
	fmt.Println()
	fmt.Println("| comparison | ratio of medians (theirs / ours) | ratio of fastest runs | goal |")
	fmt.Println("|---|---|---|---|")
	type comparison struct {
		Name       string `json:"name"`
		base, ours int
		Goal       string  `json:"goal"`
		Median     float64 `json:"ratio_of_medians"`
		Fastest    float64 `json:"ratio_of_fastest"`
	}
	cmps := []comparison{
		{Name: "our server vs tftpd-hpa, busybox, blksize 1468", base: 0, ours: 1, Goal: ">= 1"},
		{Name: "our server vs tftpd-hpa, busybox, blksize 65464", base: 2, ours: 3, Goal: ">= 1"},
		{Name: "ours windowsize 16 vs tftpd-hpa + busybox lock-step, blksize 1468", base: 0, ours: 4, Goal: ">= 5"},
		{Name: "ours at the worker's defaults vs tftpd-hpa + busybox, blksize 65464", base: 2, ours: 5, Goal: ">= 1"},
	}
	if baseline != "" {
		cmps = append(cmps,
			comparison{Name: "our server vs baseline's, busybox, blksize 1468", base: 6, ours: 1},
			comparison{Name: "our server vs baseline's, busybox, blksize 65464", base: 7, ours: 3},
			comparison{Name: "ours vs baseline, windowsize 16, blksize 1468", base: 8, ours: 4},
			comparison{Name: "ours vs baseline at the worker's defaults, blksize 65464", base: 9, ours: 5},
		)
	}
	for i, c := range cmps {
		cmps[i].Median, cmps[i].Fastest = ratio(med[c.base], med[c.ours]), ratio(best[c.base], best[c.ours])
		fmt.Printf("| %s | %.2f | %.2f | %s |\n", c.Name, cmps[i].Median, cmps[i].Fastest, c.Goal)
	}
	if results == "" {
		return nil
	}
	type row struct {
		Case     string  `json:"case"`
		MedianNS int64   `json:"median_ns"`
		Runs     []int64 `json:"runs_ns"`
	}
	var rows []row
	for i, c := range cases {
		r := row{Case: c.name, MedianNS: int64(med[i])}
		for _, t := range times[i] {
			r.Runs = append(r.Runs, int64(t))
		}
		rows = append(rows, r)
	}
	b, err := json.MarshalIndent(map[string]any{
		"measured": time.Now().UTC().Format(time.RFC3339), "size": size, "reps": reps,
		"load_average_before": loadBefore, "load_average_after": loadAvg(),
		"cases": rows, "comparisons": cmps}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(results, append(b, '\n'), 0o644)
}

// makeFile writes size pseudo-random bytes to name and returns their hash.
func makeFile(name string, size int64) ([]byte, error) {
	f, err := os.Create(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	block := make([]byte, 1<<20)
	seed := sha256.Sum256([]byte("buildfarm tftp bench"))
	for written := int64(0); written < size; {
		for i := 0; i < len(block); i += len(seed) {
			seed = sha256.Sum256(seed[:])
			copy(block[i:], seed[:])
		}
		n := min(int64(len(block)), size-written)
		if _, err := io.MultiWriter(f, h).Write(block[:n]); err != nil {
			return nil, err
		}
		written += n
	}
	return h.Sum(nil), f.Close()
}

// check compares the hash of the file name with want.
func check(name string, want []byte) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if !bytes.Equal(h.Sum(nil), want) {
		return fmt.Errorf("%s differs from the file served", name)
	}
	return nil
}

// loadAvg returns the 1-minute load average: other work on the machine
// moves lock-step figures a lot.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(b))[0]
}
