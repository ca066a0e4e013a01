// Package machinetest helps tests of machine storage: a real btrfs file
// system on a loop device, cleaned up after the test, and small machine
// directories with real data in their disks. It runs mkfs.btrfs, losetup,
// mount and umount, as root, only when BUILDFARM_VM_TESTS=1 (see testenv).
package machinetest

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// BtrfsMount makes a 512 MiB btrfs file system in a file under t.TempDir,
// attaches it to a loop device and mounts it; the clean-up unmounts it and
// detaches the device. It skips t unless VM tests run as root.
func BtrfsMount(t *testing.T) string {
	t.Helper()
	testenv.NeedVM(t)
	testenv.NeedRoot(t)
	for _, p := range []string{"mkfs.btrfs", "btrfs", "losetup", "mount", "umount"} {
		testenv.NeedProgram(t, p)
	}
	ctx := context.Background()
	img := filepath.Join(t.TempDir(), "btrfs.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(512 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := proc.Run(ctx, nil, "mkfs.btrfs", "-q", img); err != nil {
		t.Fatal(err)
	}
	out, err := proc.Output(ctx, "losetup", "--find", "--show", img)
	if err != nil {
		t.Fatal(err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if err := proc.Run(context.Background(), nil, "losetup", "-d", dev); err != nil {
			t.Errorf("detach %s: %v", dev, err)
		}
	})
	mnt := t.TempDir()
	if err := proc.Run(ctx, nil, "mount", "-t", "btrfs", dev, mnt); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := proc.Run(context.Background(), nil, "umount", mnt); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	return mnt
}

// DiskSize is the size of the disks MakeMachine writes.
const DiskSize = 8 << 20

// MakeMachine writes a machine directory: a manifest (id, name, a summary,
// type kvm), a disk.img of real data whose first 4 KiB block is filled with
// mark, a kernel and a cmdline.
func MakeMachine(t *testing.T, dir, name, id string, mark byte) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m := manifest.Machine{ID: id, Name: name, Summary: "test machine " + id, Type: "kvm"}
	if err := manifest.WriteFile(filepath.Join(dir, "manifest"), []manifest.Manifest{m.Manifest()}); err != nil {
		t.Fatal(err)
	}
	disk := make([]byte, DiskSize)
	for i := range disk { // real data, not holes
		disk[i] = byte(i*7 + 1)
	}
	copy(disk, bytes.Repeat([]byte{mark}, 4096))
	for name, data := range map[string][]byte{"disk.img": disk, "kernel": []byte("kernel " + id), "cmdline": []byte("console=ttyS0")} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
