package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/initramfs"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/testenv"
	"github.com/buildfarm/buildfarm/internal/tftp"
)

var worker struct {
	once sync.Once
	path string
	err  error
}

// buildWorker builds cmd/buildfarm-worker (static) once per test binary.
func buildWorker(t *testing.T) string {
	t.Helper()
	testenv.NeedProgram(t, "go")
	worker.once.Do(func() {
		dir, err := os.MkdirTemp("", "image-test-worker-")
		if err != nil {
			worker.err = err
			return
		}
		worker.path = filepath.Join(dir, "buildfarm-worker")
		worker.err = testenv.BuildWorker(context.Background(), worker.path, arch.Host())
	})
	if worker.err != nil {
		t.Fatalf("build buildfarm-worker: %v", worker.err)
	}
	return worker.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if worker.path != "" {
		os.RemoveAll(filepath.Dir(worker.path))
	}
	os.Exit(code)
}

func write(t *testing.T, file, content string, perm os.FileMode) string {
	t.Helper()
	if err := os.WriteFile(file, []byte(content), perm); err != nil {
		t.Fatal(err)
	}
	return file
}

// TestReproducible builds the busybox machine twice from the same inputs,
// given in another order and with other file times, and expects the same
// initrd, disk and manifest bytes.
func TestReproducible(t *testing.T) {
	testenv.NeedKernel(t)
	testenv.NeedProgram(t, "mkfs.ext4")
	bb := testenv.NeedProgram(t, "busybox")
	src := t.TempDir()
	// Any static binary stands in for the worker here.
	fakeWorker := filepath.Join(src, "worker")
	if err := copyFile(fakeWorker, bb, 0o755); err != nil {
		t.Fatal(err)
	}
	a := write(t, filepath.Join(src, "a"), "alpha\n", 0o644)
	b := write(t, filepath.Join(src, "b"), "beta\n", 0o755)
	build := func(out string, adds []Add) []byte {
		t.Helper()
		_, err := Build(context.Background(), Options{Preset: "busybox", Out: out, Worker: fakeWorker, Add: adds, DiskSize: 16 << 20})
		if err != nil {
			t.Fatal(err)
		}
		var all []byte
		for _, f := range []string{InitrdFile, DiskFile, ManifestFile, CmdlineFile} {
			data, err := os.ReadFile(filepath.Join(out, f))
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, data...)
		}
		return all
	}
	dir := t.TempDir()
	first := build(filepath.Join(dir, "1"), []Add{{a, "/opt/a"}, {b, "/opt/b"}})
	later := time.Now().Add(time.Hour)
	for _, f := range []string{a, b, fakeWorker} {
		if err := os.Chtimes(f, later, later); err != nil {
			t.Fatal(err)
		}
	}
	second := build(filepath.Join(dir, "2"), []Add{{b, "/opt/b"}, {a, "opt/a"}})
	if !bytes.Equal(first, second) {
		for _, f := range []string{InitrdFile, DiskFile, ManifestFile} {
			if err := proc.Run(context.Background(), nil, "cmp", filepath.Join(dir, "1", f), filepath.Join(dir, "2", f)); err != nil {
				t.Errorf("%s differs: %v", f, err)
			}
		}
	}
}

func TestBuildErrors(t *testing.T) {
	testenv.NeedKernel(t)
	bb := testenv.NeedProgram(t, "busybox")
	dir := t.TempDir()
	full := filepath.Join(dir, "full")
	os.Mkdir(full, 0o755)
	write(t, filepath.Join(full, "x"), "", 0o644)
	dynamic := testenv.NeedProgram(t, "cpio") // dynamically linked
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"unknown preset", Options{Preset: "gentoo"}, `unknown preset "gentoo"`},
		{"bad name", Options{Preset: "busybox", Name: "a b"}, `machine name "a b"`},
		{"no out", Options{Preset: "busybox"}, "no output directory"},
		{"out not empty", Options{Preset: "busybox", Out: full}, "is not empty"},
		{"dynamic worker", Options{Preset: "busybox", Out: filepath.Join(dir, "d"), Worker: dynamic}, "dynamically linked"},
		{"kernel without modules", Options{Preset: "busybox", Out: filepath.Join(dir, "k"), Kernel: bb}, "--kernel and --modules go together"},
		{"remove missing", Options{Preset: "busybox", Out: filepath.Join(dir, "r"), Worker: bb, Remove: []string{"no/such"}}, "--remove no/such"},
		{"add missing", Options{Preset: "busybox", Out: filepath.Join(dir, "a"), Worker: bb, Add: []Add{{"/no/such", "x"}}}, "/no/such"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Build(context.Background(), tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Build = %v, want an error saying %q", err, tc.want)
			}
		})
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("failed builds left %d entries in %s, want only the one made by the test", len(ents), dir)
	}
}

func TestParseAdd(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Add
		ok   bool
	}{
		{"a:/b", Add{"a", "/b"}, true},
		{"dir/a:b:c", Add{"dir/a", "b:c"}, true},
		{"a", Add{}, false},
		{":b", Add{}, false},
		{"a:", Add{}, false},
	} {
		got, err := ParseAdd(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseAdd(%q) = %v, %v; want %v, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestMAC(t *testing.T) {
	seen := map[string]string{}
	for _, name := range []string{"busybox", "debian", "busybox-2"} {
		mac := MAC(name)
		if mac != MAC(name) {
			t.Errorf("MAC(%s) changes between calls", name)
		}
		var b [6]byte
		if n, err := fmt.Sscanf(mac, "%02x:%02x:%02x:%02x:%02x:%02x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]); n != 6 || err != nil {
			t.Fatalf("MAC(%s) = %q: %v", name, mac, err)
		}
		if b[0]&0x02 == 0 || b[0]&0x01 != 0 {
			t.Errorf("MAC(%s) = %s: not a locally administered unicast address", name, mac)
		}
		if other, dup := seen[mac]; dup {
			t.Errorf("MAC(%s) = MAC(%s) = %s", name, other, mac)
		}
		seen[mac] = name
	}
}

// vm is a QEMU booting a machine directory, its serial console in a file.
type vm struct {
	cmd    *exec.Cmd
	serial string
	done   chan error
}

// boot starts QEMU on the machine directory dir under TCG with qboot, its
// disk unless noDisk, user networking, and the NIC's MAC mac (QEMU's default
// when empty). A TFTP server of ours serves tftpDir (writes allowed) to the
// guest as 10.0.2.2:PORT, which buildfarm.tftp on the command line tells
// the worker; the worker finds no task there and exits. QEMU is killed, by
// pid, and the server stopped when the test ends.
func boot(t *testing.T, dir, tftpDir, mac string, noDisk bool, extra ...string) *vm {
	t.Helper()
	qemu := testenv.NeedProgram(t, "qemu-system-x86_64")
	cmdline, err := os.ReadFile(filepath.Join(dir, CmdlineFile))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	srv := &tftp.Server{Root: tftpDir, AllowPut: true}
	go func() { served <- srv.Serve(ctx, conn) }()
	t.Cleanup(func() {
		stop()
		<-served
		conn.Close()
	})
	port := conn.LocalAddr().(*net.UDPAddr).Port
	serial := filepath.Join(t.TempDir(), "serial.log")
	nic := "user,model=virtio-net-pci"
	if mac != "" {
		nic += ",mac=" + mac
	}
	args := []string{"-M", "q35", "-accel", "tcg", "-m", "512", "-smp", "1",
		"-kernel", filepath.Join(dir, KernelFile), "-initrd", filepath.Join(dir, InitrdFile),
		"-append", strings.TrimSpace(fmt.Sprintf("%s buildfarm.tftp=10.0.2.2:%d %s", strings.TrimSpace(string(cmdline)), port, strings.Join(extra, " "))),
		"-nic", nic, "-serial", "file:" + serial,
		"-display", "none", "-nodefaults", "-no-reboot"}
	if _, err := os.Stat("/usr/share/qemu/qboot.rom"); err == nil {
		args = append(args, "-bios", "/usr/share/qemu/qboot.rom")
	}
	if !noDisk {
		args = append(args, "-drive", "file="+filepath.Join(dir, DiskFile)+",if=virtio,format=raw")
	}
	cmd := proc.Command(context.Background(), qemu, args...)
	v := &vm{cmd: cmd, serial: serial, done: make(chan error, 1)}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { v.done <- proc.Wait(cmd) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-v.done
	})
	t.Logf("QEMU: %s %s", qemu, strings.Join(args, " "))
	return v
}

// waitExit waits for the guest to power itself off, failing the test with
// the console's tail when it does not within d.
func (v *vm) waitExit(t *testing.T, d time.Duration) string {
	t.Helper()
	select {
	case err := <-v.done:
		v.done <- err // for the clean-up
		log, _ := os.ReadFile(v.serial)
		if err != nil {
			t.Fatalf("QEMU: %v\nconsole:\n%s", err, log)
		}
		return strings.ReplaceAll(string(log), "\r\n", "\n")
	case <-time.After(d):
		log, _ := os.ReadFile(v.serial)
		t.Fatalf("guest still running after %v; console:\n%s", d, tail(string(log), 40))
	}
	return ""
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// expectInOrder checks that each of want appears in the console, in order.
func expectInOrder(t *testing.T, console string, want ...string) {
	t.Helper()
	rest := console
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Errorf("console lacks %q (in this order: %q); console:\n%s", w, want, console)
			return
		}
		rest = rest[i+len(w):]
	}
}

// TestBootBusybox builds the busybox machine with the real worker, a hook
// (--add) and an SSH key, and boots it under QEMU: the modules load, the disk
// mounts, the network comes up (the hook fetches a file from QEMU's TFTP
// server at 10.0.2.2), the worker starts, and the guest powers itself off
// when the worker exits.
func TestBootBusybox(t *testing.T) {
	testenv.NeedVM(t)
	testenv.NeedKernel(t)
	testenv.NeedProgram(t, "mkfs.ext4")
	w := buildWorker(t)
	src := t.TempDir()
	hook := write(t, filepath.Join(src, "hook"), `#!/bin/sh
echo "hook: in $(pwd), key $(cat /root/.ssh/authorized_keys)"
grep -q ' /build ext4 ' /proc/mounts && echo "hook: /build is ext4"
port=$(sed -n 's/.*buildfarm.tftp=10.0.2.2:\([0-9]*\).*/\1/p' /proc/cmdline)
tftp -g -r greeting -l /tmp/greeting 10.0.2.2 "$port" && echo "hook: tftp says $(cat /tmp/greeting)"
`, 0o755)
	key := write(t, filepath.Join(src, "key.pub"), "ssh-ed25519 AAAAtest test@buildfarm\n", 0o644)
	tftpDir := t.TempDir()
	write(t, filepath.Join(tftpDir, "greeting"), "hello over slirp\n", 0o644)

	out := filepath.Join(t.TempDir(), "m")
	m, err := Build(context.Background(), Options{
		Preset: "busybox", Out: out, Worker: w, SSHKey: key,
		Add: []Add{{hook, "/etc/buildfarm/rc.d/50-test"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := manifest.ReadFile(filepath.Join(out, ManifestFile))
	if err != nil || ms.Len() != 1 {
		t.Fatalf("manifest: %v, %d manifests", err, ms.Len())
	}
	mm, err := manifest.ParseMachine(ms.Manifest(0), ManifestFile, manifest.Strict)
	if err != nil {
		t.Fatal(err)
	}
	if mm.ID != m.ID || mm.Name != "busybox" || mm.Type != "kvm" || mm.MAC != m.MAC || !strings.Contains(mm.Summary, "busybox") {
		t.Errorf("manifest: %+v, want id %s, name busybox, type kvm, mac %s", mm, m.ID, m.MAC)
	}
	if id, err := machineID(context.Background(), out); err != nil || id != m.ID {
		t.Errorf("machine id of %s = %s, %v; the manifest says %s", out, id, err, m.ID)
	}

	for _, tc := range []struct {
		name   string
		mac    string
		noDisk bool
		append string // to the kernel command line
		want   []string
	}{
		{"dhcp", "", false, "", []string{
			"init: modules loaded: virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk failover net_failover virtio_net virtio_console button evdev\n",
			"init: disk /dev/vda mounted on /build",
			"udhcpc: lease of 10.0.2.15 obtained from 10.0.2.2",
			"init: network eth0 (52:54:00:12:34:56): 10.0.2.15/24 by DHCP",
			"hook: in /build, key ssh-ed25519 AAAAtest test@buildfarm",
			"hook: /build is ext4",
			"hook: tftp says hello over slirp",
			"init: starting buildfarm-worker",
			"buildfarm-worker ", ": started",
			"init: buildfarm-worker exited: status ",
			"init: powering off",
		}},
		{"user networking, no DHCP", "", false, "buildfarm.net=user", []string{
			"init: disk /dev/vda mounted on /build",
			"init: network eth0 (52:54:00:12:34:56): static 10.0.2.15/24 via 10.0.2.2",
			"hook: tftp says hello over slirp",
			"buildfarm-worker ", ": started",
			"init: powering off",
		}},
		{"static, no disk", "00:01:02:03:04:0b", true, "", []string{
			"init: modules loaded: virtio_ring",
			"init: no disk: /build is in memory",
			"init: network eth0 (00:01:02:03:04:0b): static 10.0.2.15/24 via 10.0.2.2",
			"hook: tftp says hello over slirp",
			"buildfarm-worker ", ": started",
			"init: powering off",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			v := boot(t, out, tftpDir, tc.mac, tc.noDisk, tc.append)
			console := v.waitExit(t, 90*time.Second)
			t.Logf("booted, ran and powered off in %v", time.Since(start).Round(time.Millisecond))
			expectInOrder(t, console, tc.want...)
			// The worker reported its progress to our TFTP server.
			if b, err := os.ReadFile(filepath.Join(tftpDir, "progress")); err != nil || len(b) == 0 {
				t.Errorf("no progress from the worker over TFTP: %q, %v", b, err)
			}
			os.Remove(filepath.Join(tftpDir, "progress"))
			if strings.Contains(console, "FAILED") {
				t.Errorf("console reports a failure:\n%s", console)
			}
		})
	}
}

// TestDebianPreset builds the debian machine (debootstrap on the first run,
// then from the cache) and boots it: a hook compiles and runs a C program
// with gcc inside the chroot, and the worker starts there.
func TestDebianPreset(t *testing.T) {
	testenv.NeedVM(t)
	testenv.NeedRoot(t)
	testenv.NeedKernel(t)
	for _, p := range []string{"debootstrap", "tar", "mkfs.ext4"} {
		testenv.NeedProgram(t, p)
	}
	w := buildWorker(t)
	src := t.TempDir()
	hello := write(t, filepath.Join(src, "hello.c"), `#include <stdio.h>
int main(void) { printf("hello from gcc %d.%d in the guest\n", __GNUC__, __GNUC_MINOR__); return 0; }
`, 0o644)
	hook := write(t, filepath.Join(src, "hook"), `#!/bin/sh
cp /etc/hello.c "$BUILDFARM_ROOT/build/hello.c"
chroot "$BUILDFARM_ROOT" /bin/sh -c 'cd /build && gcc -O2 -o hello hello.c && ./hello && echo "hook: worker at $(command -v buildfarm-worker)"'
`, 0o755)
	out := filepath.Join(t.TempDir(), "m")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	m, err := Build(ctx, Options{
		Preset: "debian", Out: out, Worker: w, Name: "debian-test",
		Add: []Add{{hello, "/etc/hello.c"}, {hook, "/etc/buildfarm/rc.d/50-gcc"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built %s in %v (disk %d MiB)", m.Name, time.Since(start).Round(time.Millisecond), m.DiskSize>>20)
	start = time.Now()
	v := boot(t, out, t.TempDir(), "", false)
	console := v.waitExit(t, 3*time.Minute)
	t.Logf("booted, compiled and powered off in %v", time.Since(start).Round(time.Millisecond))
	expectInOrder(t, console,
		"init: buildfarm guest debian-test",
		"init: disk /dev/vda mounted on /mnt/root, the worker's root",
		"udhcpc: lease of 10.0.2.15",
		"hello from gcc 12.",
		"hook: worker at /usr/local/bin/buildfarm-worker",
		"buildfarm-worker ", ": started",
		"init: powering off")
}

func TestCheckStatic(t *testing.T) {
	bb := testenv.NeedProgram(t, "busybox")
	if err := checkStatic(bb, arch.Host()); err != nil {
		t.Errorf("checkStatic(%s) = %v, want nil", bb, err)
	}
	sh := testenv.NeedProgram(t, "cpio")
	if err := checkStatic(sh, arch.Host()); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Errorf("checkStatic(%s) = %v, want dynamically linked", sh, err)
	}
	notELF := write(t, filepath.Join(t.TempDir(), "x"), "#!/bin/sh\n", 0o755)
	if err := checkStatic(notELF, arch.Host()); err == nil {
		t.Errorf("checkStatic(a script) = nil, want an error")
	}
	if err := checkStatic("/no/such", arch.Host()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("checkStatic(/no/such) = %v, want ErrNotExist", err)
	}
	other := arch.AArch64
	if arch.Host() == arch.AArch64 {
		other = arch.X8664
	}
	if err := checkStatic(bb, other); err == nil || !strings.Contains(err.Error(), "not for "+string(other)) {
		t.Errorf("checkStatic(%s, %s) = %v, want an error about the architecture", bb, other, err)
	}
}

// TestFetchKernel fetches Debian's cloud kernel into an empty cache, as
// scripts/deps does, and expects the same kernel as the cache it has.
func TestFetchKernel(t *testing.T) {
	testenv.NeedVM(t)
	testenv.NeedRoot(t)
	have := testenv.NeedKernel(t)
	for _, p := range []string{"apt-cache", "apt-get", "dpkg", "depmod"} {
		testenv.NeedProgram(t, p)
	}
	t.Setenv("BUILDFARM_CACHE", t.TempDir())
	var progress bytes.Buffer
	k, err := FetchKernel(context.Background(), &progress)
	if err != nil {
		t.Fatal(err)
	}
	if k.Version != have.Version {
		t.Fatalf("fetched kernel %s, the cache has %s (a newer package? then update the cache with scripts/deps)", k.Version, have.Version)
	}
	for _, f := range []struct{ got, want string }{
		{k.Image, have.Image},
		{filepath.Join(k.Modules, "modules.dep"), filepath.Join(have.Modules, "modules.dep")},
	} {
		got, err1 := os.ReadFile(f.got)
		want, err2 := os.ReadFile(f.want)
		if err1 != nil || err2 != nil || !bytes.Equal(got, want) {
			t.Errorf("%s differs from %s (%v, %v)", f.got, f.want, err1, err2)
		}
	}
	if !strings.Contains(progress.String(), "downloading linux-image-") {
		t.Errorf("progress = %q, want a line saying what it downloads", progress.String())
	}
	ents, _ := os.ReadDir(filepath.Dir(k.Dir))
	if len(ents) != 1 {
		t.Errorf("cache holds %d entries after the fetch, want only kernel/", len(ents))
	}
}

func TestUnmountUnder(t *testing.T) {
	testenv.NeedVM(t)
	testenv.NeedRoot(t)
	dir := filepath.Join(t.TempDir(), "with space")
	inner := filepath.Join(dir, "a", "b")
	if err := os.MkdirAll(filepath.Join(dir, "a"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", filepath.Join(dir, "a"), "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(filepath.Join(dir, "a"), syscall.MNT_DETACH) })
	os.Mkdir(inner, 0o755)
	if err := syscall.Mount("tmpfs", inner, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(inner, syscall.MNT_DETACH) })
	if err := unmountUnder(dir); err != nil {
		t.Fatal(err)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), strings.ReplaceAll(dir, " ", `\040`)) {
		t.Errorf("mounts left under %s:\n%s", dir, mounts)
	}
}

// TestInitOverride: --init-override replaces /init and nothing else.
func TestInitOverride(t *testing.T) {
	testenv.NeedKernel(t)
	testenv.NeedProgram(t, "mkfs.ext4")
	bb := testenv.NeedProgram(t, "busybox")
	myInit := write(t, filepath.Join(t.TempDir(), "init"), "#!/bin/sh\necho mine\npoweroff -f\n", 0o700)
	out := filepath.Join(t.TempDir(), "m")
	if _, err := Build(context.Background(), Options{Preset: "busybox", Out: out, Worker: bb, InitOverride: myInit, DiskSize: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	got := members(t, filepath.Join(out, InitrdFile))
	if want := "-rwxr-xr-x #!/bin/sh\necho mine\npoweroff -f\n"; got["init"] != want {
		t.Errorf("init = %q, want %q", got["init"], want)
	}
	for _, p := range []string{"etc/buildfarm/modules", WorkerPath, "bin/busybox", "dev/console"} {
		if _, ok := got[p]; !ok {
			t.Errorf("initramfs lacks %s", p)
		}
	}
}

// members reads the initramfs file and returns each member's mode and
// content ("MODE CONTENT") by path.
func members(t *testing.T, file string) map[string]string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := map[string]string{}
	err = initramfs.Walk(f, func(h initramfs.Header, content io.Reader) error {
		b, err := io.ReadAll(content)
		got[h.Path] = fmt.Sprintf("%v %s", h.Mode, b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestModuleSignatures builds the busybox machine with the cached kernel
// (whose configuration loads unsigned modules) by default and with
// KeepModuleSignatures, and looks for the signatures in its initramfs; and
// a kernel that forces signatures keeps them.
func TestModuleSignatures(t *testing.T) {
	k := testenv.NeedKernel(t)
	testenv.NeedProgram(t, "mkfs.ext4")
	bb := testenv.NeedProgram(t, "busybox")
	const marker = "~Module signature appended~\n"
	for _, keep := range []bool{false, true} {
		out := filepath.Join(t.TempDir(), "m")
		m, err := Build(t.Context(), Options{Preset: "busybox", Out: out, Worker: bb, DiskSize: 8 << 20, KeepModuleSignatures: keep})
		if err != nil {
			t.Fatal(err)
		}
		if m.UnsignedModules == keep {
			t.Errorf("KeepModuleSignatures %v: UnsignedModules = %v", keep, m.UnsignedModules)
		}
		n := 0
		for p, c := range members(t, filepath.Join(out, InitrdFile)) {
			if !strings.HasSuffix(p, ".ko") {
				continue
			}
			n++
			if strings.HasSuffix(c, marker) != keep || !strings.Contains(c, "\x7fELF") {
				t.Errorf("KeepModuleSignatures %v: %s signed: %v; want %v, an ELF module", keep, p, strings.HasSuffix(c, marker), keep)
			}
		}
		if n != len(m.Modules) {
			t.Errorf("%d modules in the initramfs, want %d", n, len(m.Modules))
		}
	}
	forced := write(t, filepath.Join(t.TempDir(), "config"), "CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_FORCE=y\n", 0o644)
	for _, c := range []struct {
		config string
		want   bool
	}{{k.Config, true}, {forced, false}, {"", false}, {filepath.Join(t.TempDir(), "none"), false}} {
		k.Config = c.config
		if got, err := loadsUnsigned(k); err != nil || got != c.want {
			t.Errorf("loadsUnsigned(config %q) = %v, %v; want %v", c.config, got, err, c.want)
		}
	}
}
