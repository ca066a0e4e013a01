// Command snapshot measures what a task's machine snapshot costs on each
// storage backend of package machine, against a plain copy of the machine,
// for a 1 GiB and a 20 GiB disk. Run it as root (it makes a btrfs file
// system on a loop device, and removes it when done):
//
//	go run ./bench/snapshot [-runs 5] [-dir /tmp] [-copy20]
//
// It prints a Markdown table for bench/README.md and writes the same
// figures to -json (bench/snapshot/results.json), so that they can be
// regenerated and compared. See the README's "Snapshots" section for what
// exactly each disk holds and what is measured. Two copies stand beside
// the snapshots: cp -a --reflink=never --sparse=never (every byte copied)
// and cp -a --reflink=auto, what a user would type (a reflink on btrfs).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/buildfarm/buildfarm/internal/machine"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

const gib = 1 << 30

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench/snapshot: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) (err error) {
	fl := flag.NewFlagSet("snapshot", flag.ContinueOnError)
	runs := fl.Int("runs", 5, "snapshots per backend and size (median reported)")
	base := fl.String("dir", os.TempDir(), "a directory on a file system without reflinks (ext4)")
	copy20 := fl.Bool("copy20", false, "also copy the 20 GiB machine once (writes 20 GiB more to -dir; about a minute)")
	jsonOut := fl.String("json", filepath.Join("bench", "snapshot", "results.json"), "`file` to write the results to as JSON")
	if err := fl.Parse(args); err != nil {
		return err
	}
	work, err := os.MkdirTemp(*base, "bench-snapshot-")
	if err != nil {
		return err
	}
	// Clean-ups run in reverse; a failing one is reported with the rest.
	var cleanups []func() error
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			err = errors.Join(err, cleanups[i]())
		}
	}()
	cleanups = append(cleanups, func() error { return os.RemoveAll(work) })
	bctx := context.WithoutCancel(ctx)

	// 1. The btrfs file system: a sparse 32 GiB file on a loop device.
	bdir, unmount, err := testenv.MountBtrfs(ctx, work, 32*gib)
	if err != nil {
		return err
	}
	cleanups = append(cleanups, unmount)
	edir := filepath.Join(work, "ext4")
	if err := os.Mkdir(edir, 0o755); err != nil {
		return err
	}
	if b, err := machine.IsBtrfs(edir); err != nil || b {
		return fmt.Errorf("-dir %s: want a file system without reflinks (btrfs: %v, %v)", *base, b, err)
	}

	// 2. The machines. 1 GiB: real pseudo-random data, on both. 20 GiB on
	// btrfs: the 1 GiB disk cloned 20 times into one file (real extents,
	// no holes); on ext4: fallocate'd (allocated, unwritten extents).
	btrfsB, err := machine.NewBackend(bdir, machine.BackendBtrfs)
	if err != nil {
		return err
	}
	fallbackB, err := machine.NewBackend(bdir, machine.BackendFallback)
	if err != nil {
		return err
	}
	type size struct {
		name       string
		btrfs, ext string // machine directories
	}
	sizes := []size{{"1 GiB", filepath.Join(bdir, "m1"), filepath.Join(edir, "m1")},
		{"20 GiB", filepath.Join(bdir, "m20"), filepath.Join(edir, "m20")}}
	for _, s := range sizes {
		if err := btrfsB.Create(ctx, s.btrfs); err != nil {
			return err
		}
		cleanups = append(cleanups, func() error { return btrfsB.Delete(bctx, s.btrfs) })
		for _, d := range []string{s.btrfs, s.ext} {
			if err := writeMachineFiles(d); err != nil {
				return err
			}
		}
	}
	fmt.Fprintln(os.Stderr, "writing the 1 GiB disks")
	for _, d := range []string{sizes[0].btrfs, sizes[0].ext} {
		if err := writeRandom(filepath.Join(d, machine.RawDisk), gib); err != nil {
			return err
		}
	}
	if err := cloneRepeated(filepath.Join(sizes[0].btrfs, machine.RawDisk), filepath.Join(sizes[1].btrfs, machine.RawDisk), 20); err != nil {
		return err
	}
	if err := fallocate(filepath.Join(sizes[1].ext, machine.RawDisk), 20*gib); err != nil {
		return err
	}
	for _, s := range sizes {
		if err := btrfsB.SetReadOnly(ctx, s.btrfs); err != nil {
			return err
		}
		if err := fallbackB.SetReadOnly(ctx, s.ext); err != nil {
			return err
		}
	}
	unix.Sync()

	// 3. Measure, interleaved per run: each way snapshots (or copies) the
	// machine directory, and the result is deleted before the next run.
	type way struct {
		name string
		snap func(ctx context.Context, s size, dst string) (string, error)
		del  func(ctx context.Context, dst string) error
		dir  func(s size) string
	}
	cp := func(ctx context.Context, src, dst string) (string, error) {
		return "cp", proc.Run(ctx, nil, "cp", "-a", "--reflink=never", "--sparse=never", src, dst)
	}
	cpAuto := func(ctx context.Context, src, dst string) (string, error) {
		return "cp", proc.Run(ctx, nil, "cp", "-a", "--reflink=auto", src, dst)
	}
	ways := []way{
		{"btrfs snapshot", func(ctx context.Context, s size, dst string) (string, error) {
			return btrfsB.Snapshot(ctx, s.btrfs, dst)
		},
			func(ctx context.Context, d string) error { return btrfsB.Delete(ctx, d) }, func(s size) string { return bdir }},
		{"fallback on btrfs", func(ctx context.Context, s size, dst string) (string, error) {
			return fallbackB.Snapshot(ctx, s.btrfs, dst)
		},
			func(ctx context.Context, d string) error { return fallbackB.Delete(ctx, d) }, func(s size) string { return bdir }},
		{"fallback on ext4", func(ctx context.Context, s size, dst string) (string, error) {
			return fallbackB.Snapshot(ctx, s.ext, dst)
		},
			func(ctx context.Context, d string) error { return fallbackB.Delete(ctx, d) }, func(s size) string { return edir }},
		{"plain copy (cp) on ext4", func(ctx context.Context, s size, dst string) (string, error) { return cp(ctx, s.ext, dst) },
			func(ctx context.Context, d string) error { return fallbackB.Delete(ctx, d) }, func(s size) string { return edir }},
		{autoBtrfs, func(ctx context.Context, s size, dst string) (string, error) { return cpAuto(ctx, s.btrfs, dst) },
			func(ctx context.Context, d string) error { return fallbackB.Delete(ctx, d) }, func(s size) string { return bdir }},
		{autoExt4, func(ctx context.Context, s size, dst string) (string, error) { return cpAuto(ctx, s.ext, dst) },
			func(ctx context.Context, d string) error { return fallbackB.Delete(ctx, d) }, func(s size) string { return edir }},
	}
	type result struct {
		method      string
		snap, del   []time.Duration
		notMeasured bool
	}
	results := map[string]*result{}
	for _, s := range sizes {
		for i := 0; i < *runs; i++ {
			for _, w := range ways {
				key := s.name + "/" + w.name
				r := results[key]
				if r == nil {
					r = &result{}
					results[key] = r
				}
				if s.name == "20 GiB" && (strings.HasPrefix(w.name, "plain copy") || w.name == autoExt4) && (!*copy20 || i > 0) {
					r.notMeasured = !*copy20 // 20 GiB of writes: see the README
					continue
				}
				dst := filepath.Join(w.dir(s), fmt.Sprintf("snap-%d", i))
				t0 := time.Now()
				m, err := w.snap(ctx, s, dst)
				d := time.Since(t0)
				if err != nil {
					return fmt.Errorf("%s %s: %w", w.name, s.name, err)
				}
				t0 = time.Now()
				if err := w.del(ctx, dst); err != nil {
					return err
				}
				r.snap, r.del, r.method = append(r.snap, d), append(r.del, time.Since(t0)), m
				fmt.Fprintf(os.Stderr, "%s %s run %d: %v (%s)\n", s.name, w.name, i+1, d.Round(time.Microsecond), m)
			}
		}
	}

	// 4. The table: medians, and each copy's time over each way's: the
	// copy of every byte (on ext4), and cp --reflink=auto on the way's own
	// file system.
	fmt.Fprintf(out, "| disk | way | how | snapshot (median of %d) | delete | cp --reflink=never ÷ snapshot | cp --reflink=auto ÷ snapshot |\n|---|---|---|---:|---:|---:|---:|\n", *runs)
	copy1 := median(results["1 GiB/plain copy (cp) on ext4"].snap)
	var rows []jsonRow
	for _, s := range sizes {
		copyT, note := copy1, ""
		if s.name == "20 GiB" {
			copyT, note = 20*copy1, " (copy: 20 × the 1 GiB copy, not measured)"
			if *copy20 {
				copyT, note = results["20 GiB/plain copy (cp) on ext4"].snap[0], " (copy: one run)"
			}
		}
		for _, w := range ways {
			r := results[s.name+"/"+w.name]
			row := jsonRow{Disk: s.name, Way: w.name, Runs: len(r.snap)}
			if r.notMeasured && w.name == autoExt4 {
				fmt.Fprintf(out, "| %s | %s | | not measured (-copy20) | | | |\n", s.name, w.name)
				rows = append(rows, row)
				continue
			}
			if r.notMeasured {
				fmt.Fprintf(out, "| %s | %s | | ≈ %s, extrapolated | | | |\n", s.name, w.name, fmtDur(copyT))
				rows = append(rows, row)
				continue
			}
			sn := median(r.snap)
			auto := results[s.name+"/"+autoBtrfs]
			if w.dir(s) == edir {
				auto = results[s.name+"/"+autoExt4]
			}
			autoCol := "not measured"
			if !auto.notMeasured {
				row.AutoCopyOverSnapshot = float64(median(auto.snap)) / float64(sn)
				autoCol = fmtRatio(row.AutoCopyOverSnapshot)
			}
			row.Method, row.SnapshotNS, row.DeleteNS = r.method, sn.Nanoseconds(), median(r.del).Nanoseconds()
			row.CopyOverSnapshot = float64(copyT) / float64(sn)
			rows = append(rows, row)
			fmt.Fprintf(out, "| %s | %s | %s | %s | %s | %s%s | %s |\n", s.name, w.name, r.method, fmtDur(sn), fmtDur(time.Duration(row.DeleteNS)),
				fmtRatio(row.CopyOverSnapshot), note, autoCol)
		}
	}
	return writeJSON(*jsonOut, *runs, rows)
}

// The ways that copy with cp --reflink=auto.
const (
	autoBtrfs = "cp -a --reflink=auto on btrfs"
	autoExt4  = "cp -a --reflink=auto on ext4"
)

// jsonRow is one line of the table in -json; a way not measured has no
// figures.
type jsonRow struct {
	Disk                 string  `json:"disk"`
	Way                  string  `json:"way"`
	Method               string  `json:"method,omitempty"`
	Runs                 int     `json:"runs"`
	SnapshotNS           int64   `json:"snapshot_median_ns,omitempty"`
	DeleteNS             int64   `json:"delete_median_ns,omitempty"`
	CopyOverSnapshot     float64 `json:"cp_reflink_never_over_snapshot,omitempty"`
	AutoCopyOverSnapshot float64 `json:"cp_reflink_auto_over_snapshot,omitempty"`
}

// writeJSON writes the results, with when and where they were measured.
func writeJSON(path string, runs int, rows []jsonRow) error {
	var u unix.Utsname
	unix.Uname(&u)
	b, err := json.MarshalIndent(struct {
		Measured string    `json:"measured"`
		Kernel   string    `json:"kernel"`
		Runs     int       `json:"runs"`
		Rows     []jsonRow `json:"rows"`
	}{time.Now().UTC().Format(time.RFC3339), unix.ByteSliceToString(u.Release[:]), runs, rows}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write the results: %w", err)
	}
	fmt.Fprintf(os.Stderr, "results written to %s\n", path)
	return nil
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func fmtDur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func fmtRatio(r float64) string {
	if r >= 100 {
		return fmt.Sprintf("%.0f×", r)
	}
	return fmt.Sprintf("%.1f×", r)
}

// writeMachineFiles writes a machine's small files.
func writeMachineFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	m := manifest.Machine{ID: "bench", Name: "bench", Summary: "snapshot benchmark", Type: "kvm"}
	if err := manifest.WriteFile(filepath.Join(dir, machine.ManifestFile), []manifest.Manifest{m.Manifest()}); err != nil {
		return err
	}
	kernel := make([]byte, 8<<20)
	for i := range kernel {
		kernel[i] = byte(i)
	}
	if err := os.WriteFile(filepath.Join(dir, "kernel"), kernel, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "cmdline"), []byte("console=ttyS0 panic=-1\n"), 0o644)
}

// writeRandom writes n bytes of pseudo-random data to path and syncs it.
func writeRandom(path string, n int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r := rand.NewChaCha8([32]byte{1})
	buf := make([]byte, 4<<20)
	for off := int64(0); off < n; off += int64(len(buf)) {
		r.Read(buf)
		if _, err := f.Write(buf); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

// cloneRepeated makes dst times copies of src back to back, by FICLONERANGE.
func cloneRepeated(src, dst string, times int) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	for i := 0; i < times; i++ {
		err := unix.IoctlFileCloneRange(int(out.Fd()), &unix.FileCloneRange{
			Src_fd: int64(in.Fd()), Src_length: uint64(fi.Size()), Dest_offset: uint64(i) * uint64(fi.Size())})
		if err != nil {
			return fmt.Errorf("clone %s into %s: %w", src, dst, err)
		}
	}
	return out.Close()
}

// fallocate allocates n bytes for the new file path.
func fallocate(path string, n int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), 0, 0, n); err != nil {
		return fmt.Errorf("fallocate %s: %w", path, err)
	}
	return f.Close()
}
