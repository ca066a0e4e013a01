package machine

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/buildfarm/buildfarm/internal/machine/machinetest"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/proc"
)

func btrfsMount(t *testing.T) string { return machinetest.BtrfsMount(t) }

// diskSize is the size of the test machines' disks.
const diskSize = machinetest.DiskSize

// Offsets of the marks that tell which layer wrote what.
const (
	markRevision  = 0
	markBootstrap = 1 << 20
	markTask      = 2 << 20
)

// makeMachine writes a machine directory whose disk's first block is rev.
func makeMachine(t *testing.T, dir, name, id string, rev byte) {
	t.Helper()
	machinetest.MakeMachine(t, dir, name, id, rev)
}

// writeMark writes a 4 KiB block of b at off of the machine directory's
// disk, as the VM would.
func writeMark(t *testing.T, dir string, off int64, b byte) {
	t.Helper()
	path, format, err := Disk(dir)
	if err != nil {
		t.Fatal(err)
	}
	if format == "raw" {
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt(bytes.Repeat([]byte{b}, 4096), off); err != nil {
			t.Fatal(err)
		}
		return
	}
	cmd := fmt.Sprintf("write -P %d %d 4k", b, off)
	if err := proc.Run(context.Background(), nil, "qemu-io", "-f", format, "-c", cmd, path); err != nil {
		t.Fatal(err)
	}
}

// readMark returns the first byte of the 4 KiB block at off of the machine
// directory's disk, through its backing chain.
func readMark(t *testing.T, dir string, off int64) byte {
	t.Helper()
	path, format, err := Disk(dir)
	if err != nil {
		t.Fatal(err)
	}
	if format != "raw" {
		raw := filepath.Join(t.TempDir(), "disk.raw")
		if err := proc.Run(context.Background(), nil, "qemu-img", "convert", "-U", "-f", format, "-O", "raw", path, raw); err != nil {
			t.Fatal(err)
		}
		path = raw
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 4096)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, bytes.Repeat(b[:1], 4096)) {
		return 0
	}
	return b[0]
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// bootstrapManifest is what a bootstrap of c would record.
func bootstrapManifest(c *Candidate, want Want) *manifest.BootstrappedMachine {
	bm := &manifest.BootstrappedMachine{Machine: *c.Machine, Toolchain: manifest.Toolchain{ID: want.ToolchainID}}
	for tool, v := range want.Versions {
		bm.Bootstrap.Versions = append(bm.Bootstrap.Versions, manifest.ToolVersion{Tool: tool, Version: v})
	}
	return bm
}
