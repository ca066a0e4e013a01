package hostos

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/buildfarm/buildfarm/internal/testenv"
)

// loopFS makes a filesystem of type fs (ext4 or btrfs) labelled label on
// a loop device, detached at the end of the test.
func loopFS(t *testing.T, fs, label string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "fs.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 128<<20); err != nil {
		t.Fatal(err)
	}
	mkfs := testenv.NeedProgram(t, "mkfs."+fs)
	if out, err := exec.Command(mkfs, "-q", "-L", label, img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.%s: %v: %s", fs, err, out)
	}
	out, err := exec.Command("losetup", "-f", "--show", img).Output()
	if err != nil {
		t.Fatalf("losetup: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

// TestStorageByLabel (the manual's storage): on loop devices, the state
// volume and two machine volumes are found by their labels and mounted.
func TestStorageByLabel(t *testing.T) {
	testenv.NeedRoot(t)
	state := loopFS(t, "ext4", StateLabel)
	def := loopFS(t, "ext4", MachinesLabel)
	// ext4 labels hold 16 bytes: a named volume needs btrfs.
	vol := loopFS(t, "btrfs", MachinesLabel+".big")
	all, err := FindLabels()
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]Labelled{}
	var ours []Labelled
	for _, l := range all {
		if l.Device == state || l.Device == def || l.Device == vol {
			found[l.Device] = l
			ours = append(ours, l)
		}
	}
	for dev, want := range map[string]string{state: StateLabel + " ext4", def: MachinesLabel + " ext4", vol: MachinesLabel + ".big btrfs"} {
		if l := found[dev]; l.Label+" "+l.Type != want {
			t.Errorf("%s: found %+v, want %s", dev, l, want)
		}
	}
	root := t.TempDir()
	ctx := context.Background()
	s, err := MountStorage(ctx, slog.Default(), root, ours)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Unmount(ctx)
	mounts, _ := os.ReadFile("/proc/self/mounts")
	for _, dir := range []string{filepath.Join(root, "state"), filepath.Join(root, "build/machines/default"), filepath.Join(root, "build/machines/big")} {
		if !strings.Contains(string(mounts), " "+dir+" ") {
			t.Errorf("%s is not mounted", dir)
		}
	}
	if err := s.Unmount(ctx); err != nil {
		t.Error(err)
	}
	// Without a machines volume: the error says how to make one.
	_, err = MountStorage(ctx, slog.Default(), root, []Labelled{found[state]})
	if !errors.Is(err, ErrNoMachines) || !strings.Contains(err.Error(), "mkfs.btrfs -L buildos.machines") {
		t.Errorf("no machines volume: err = %v", err)
	}
}
