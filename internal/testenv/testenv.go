// Package testenv tells tests what this machine offers and skips, with the
// reason, those that cannot run here. Costly tests are marked, not hidden:
// VM tests (real QEMU, btrfs on loop devices, network namespaces) run only
// when BUILDFARM_VM_TESTS=1, which scripts/test and CI always set. It also
// holds what tests and the bench/ harnesses share: building buildfarm and
// the worker (GoBuild, BuildWorker, Worker), a btrfs file system on a
// loop device (MountBtrfs, Btrfs), an agent's VM registry that stops the
// VMs left in it (VMRegistry), and what a harness records of the host
// beside its figures (LoadAverage, HostKernel, QEMUVersion, Commit).
//
// Environment:
//
//	BUILDFARM_VM_TESTS  1 to run the VM and root-only tests
//	BUILDFARM_CACHE     the cache directory (see package cache), where
//	                    scripts/deps puts the guest kernel
package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/cache"
	"github.com/buildfarm/buildfarm/internal/proc"
)

// VMTests reports whether costly VM tests were asked for.
func VMTests() bool { return os.Getenv("BUILDFARM_VM_TESTS") == "1" }

// NeedVM skips t unless VM tests were asked for.
func NeedVM(t testing.TB) {
	t.Helper()
	if !VMTests() {
		t.Skip("VM test: set BUILDFARM_VM_TESTS=1 (scripts/test does) to run it")
	}
}

// NeedRoot skips t unless running as root (loop devices, mounts,
// namespaces); when VM tests were asked for, not being root is a failure,
// so that a run that cannot test them does not pass.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	const why = "needs root: loop devices, mounts and network namespaces"
	if VMTests() {
		t.Fatalf("%s (BUILDFARM_VM_TESTS=1: run the tests as root)", why)
	}
	t.Skip(why)
}

// NeedProgram returns the path of an external program, and skips t when it
// is missing: when VM tests were asked for, a missing program is a failure,
// since scripts/deps installs them all.
func NeedProgram(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if VMTests() {
			t.Fatalf("%s not found (scripts/deps installs it): %v", name, err)
		}
		t.Skipf("%s not found; run scripts/deps", name)
	}
	return p
}

// NeedKernel returns the cached guest kernel, or fails (VM tests) or skips.
func NeedKernel(t testing.TB) cache.Kernel {
	t.Helper()
	k, err := cache.GuestKernel()
	if err != nil {
		if VMTests() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	return k
}

// NeedKernelFor returns the cached guest kernel of a's guests (for
// aarch64, scripts/deps puts it in kernel-arm64), or fails (VM tests) or
// skips.
func NeedKernelFor(t testing.TB, a arch.Arch) cache.Kernel {
	t.Helper()
	k, err := cache.GuestKernelFor(a)
	if err != nil {
		if VMTests() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	return k
}

// NeedBusybox returns the static busybox of a's guests (for another
// architecture than the host's, the one scripts/deps puts in the cache),
// or fails (VM tests) or skips.
func NeedBusybox(t testing.TB, a arch.Arch) string {
	t.Helper()
	bb, err := cache.Busybox(a)
	if err != nil {
		if VMTests() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	return bb
}

// Btrfs makes a btrfs file system of size bytes on a loop device, mounts it
// on a fresh directory and returns that directory (see MountBtrfs). Cleanup
// unmounts it and detaches the loop device, so nothing is left behind. It
// needs root and btrfs-progs, and skips (or, for VM tests, fails) without
// them.
func Btrfs(t testing.TB, size int64) string {
	t.Helper()
	NeedRoot(t)
	NeedProgram(t, "mkfs.btrfs")
	mnt, unmount, err := MountBtrfs(context.Background(), t.TempDir(), size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unmount(); err != nil {
			t.Error(err)
		}
	})
	return mnt
}

// MountBtrfs makes a btrfs file system of size bytes in a sparse file
// dir/btrfs.img, mounts it on a loop device at dir/mnt and returns the
// mount point, and unmount, which unmounts it, detaches the loop device
// and removes the image. The tests (Btrfs) and the benchmarks share it.
func MountBtrfs(ctx context.Context, dir string, size int64) (mnt string, unmount func() error, err error) {
	img := filepath.Join(dir, "btrfs.img")
	mnt = filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return "", nil, err
	}
	f, err := os.Create(img)
	if err == nil {
		err = f.Truncate(size)
		f.Close()
	}
	if err != nil {
		return "", nil, fmt.Errorf("btrfs image %s: %w", img, err)
	}
	if err := proc.Run(ctx, nil, "mkfs.btrfs", "-q", img); err != nil {
		return "", nil, err
	}
	if err := proc.Run(ctx, nil, "mount", "-o", "loop", img, mnt); err != nil {
		return "", nil, err
	}
	return mnt, func() error {
		// Subvolumes and open files (a QEMU not yet reaped) can make the
		// first try fail; a lazy unmount still frees the loop device once
		// the last user is gone.
		var err error
		for i := 0; ; i++ {
			out, uerr := exec.Command("umount", mnt).CombinedOutput()
			if uerr == nil {
				break
			}
			if i == 20 {
				err = fmt.Errorf("umount %s: %v: %s (unmounted lazily)", mnt, uerr, out)
				exec.Command("umount", "-l", mnt).Run()
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if out, _ := exec.Command("losetup", "-j", img).Output(); strings.TrimSpace(string(out)) != "" {
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				dev, _, _ := strings.Cut(line, ":")
				exec.Command("losetup", "-d", dev).Run()
			}
		}
		return errors.Join(err, os.Remove(img))
	}, nil
}

// OpenSSL runs the openssl command with stdin and returns its standard
// output; it fails the test, with what openssl printed, when openssl does.
// Without openssl it fails (VM tests) or skips, as NeedProgram does.
func OpenSSL(t testing.TB, stdin []byte, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(NeedProgram(t, "openssl"), args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("openssl %v: %v: %s", args, err, stderr.Bytes())
	}
	return out
}

// RSAKeyPair makes a 2048-bit RSA key with openssl, as a bbot agent's key
// is made (openssl genrsa), in dir: the private key (PKCS#1 PEM) and its
// public key (openssl rsa -pubout). It returns both files.
func RSAKeyPair(t testing.TB, dir string) (keyFile, pubFile string) {
	t.Helper()
	keyFile, pubFile = filepath.Join(dir, "key.pem"), filepath.Join(dir, "pub.pem")
	OpenSSL(t, nil, "genrsa", "-out", keyFile, "2048")
	OpenSSL(t, nil, "rsa", "-in", keyFile, "-pubout", "-out", pubFile)
	return keyFile, pubFile
}
