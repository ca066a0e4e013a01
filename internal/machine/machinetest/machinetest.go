// Package machinetest helps tests of machine storage: a real btrfs file
// system on a loop device, cleaned up after the test, and small machine
// directories with real data in their disks. It runs mkfs.btrfs, losetup,
// mount and umount, as root, only when BUILDFARM_VM_TESTS=1 (see testenv).
package machinetest

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// BtrfsMount makes a 512 MiB btrfs file system on a loop device and mounts
// it (testenv.Btrfs); the clean-up unmounts it and detaches the device. It
// skips t unless VM tests run as root.
func BtrfsMount(t *testing.T) string {
	t.Helper()
	testenv.NeedVM(t)
	testenv.NeedProgram(t, "btrfs")
	return testenv.Btrfs(t, 512<<20)
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
