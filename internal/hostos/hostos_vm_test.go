package hostos

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/image"
	"github.com/buildfarm/buildfarm/internal/netns"
	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// TestHostOSBoots is the end-to-end test, one VM under TCG: the
// host OS image boots from kernel and initrd with a command line naming a
// toolchain URL and a controller on the host; it finds its machines disk
// by label, fetches the toolchain over HTTP, starts an agent, and that
// agent appears at the controller. The controller requires
// authentication: the agents' key, made at this first boot on the state
// disk (labelled buildos.state), is printed on the console; the test
// registers it (controller key add), and the agent then appears under its
// fingerprint. The set-up is looked at over SSH, logging in as user build
// with the key given in buildos.ssh_key (dropbear's client, dbclient): the
// private bridge br1 has its address, udhcpd listens on it (port 67),
// forwarding is on, the agent runs with --bridge br1 and the key, and the
// console shows the NAT rule read back from the kernel and the set-up's
// look at br1 as a guest sees it (a veth in a namespace of its own got a
// lease from udhcpd and fetched the build id from the test's HTTP server
// through the NAT); a login as root, or as build with another key, is
// refused. A new
// build id upstream then makes the monitor drain the agent and reboot
// (QEMU runs with -no-reboot, so the reboot ends it). QEMU, the HTTP
// server and the controller share a network namespace of their own: the
// guest reaches them as 10.0.2.2 and nothing else, and the test reaches
// the guest's SSH server through QEMU's forward of 127.0.0.1:18022 there.
func TestHostOSBoots(t *testing.T) {
	testenv.NeedVM(t)
	testenv.NeedRoot(t)
	qemu := testenv.NeedProgram(t, "qemu-system-x86_64")
	mkfs := testenv.NeedProgram(t, "mkfs.ext4")
	dropbearkey := testenv.NeedProgram(t, "dropbearkey")
	dbclient := testenv.NeedProgram(t, "dbclient")
	k := testenv.NeedKernel(t)
	testenv.NeedBusybox(t, arch.X8664)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	dir := t.TempDir()

	// The buildfarm binary, and the image with it.
	bf := filepath.Join(dir, "buildfarm")
	if err := testenv.GoBuild(ctx, bf, "./cmd/buildfarm", ""); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "img")
	if _, err := image.BuildHostOS(ctx, image.HostOSOptions{Out: img, Program: bf, Kernel: k.Image, Modules: k.Modules}, nil); err != nil {
		t.Fatal(err)
	}

	// The machines disk: one machine, in an ext4 labelled buildos.machines.
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "manifest"), []byte(": 1\nid: m1\nname: busybox\nsummary: a machine the agent never boots\ntype: kvm\n"), 0o644)
	for _, f := range []string{"kernel", "initrd", "cmdline"} {
		os.WriteFile(filepath.Join(src, f), []byte("-\n"), 0o644)
	}
	mroot := filepath.Join(dir, "machines")
	if out, err := exec.Command(bf, "machine", "add", "--machines", mroot, "--name", "busybox", src).CombinedOutput(); err != nil {
		t.Fatalf("machine add: %v\n%s", err, out)
	}
	disk := filepath.Join(dir, "disk.img")
	os.WriteFile(disk, nil, 0o644)
	os.Truncate(disk, 64<<20)
	if out, err := exec.Command(mkfs, "-q", "-L", MachinesLabel, "-d", filepath.Join(mroot, "default"), disk).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	// The state disk, empty: the agents' key is made on it.
	stateDisk := filepath.Join(dir, "state.img")
	os.WriteFile(stateDisk, nil, 0o644)
	os.Truncate(stateDisk, 16<<20)
	if out, err := exec.Command(mkfs, "-q", "-L", StateLabel, stateDisk).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}

	// SSH: the key that may log in as build, and one that may not.
	sshKey, otherKey := filepath.Join(dir, "id_build"), filepath.Join(dir, "id_other")
	var sshPub string
	for _, k := range []string{sshKey, otherKey} {
		out, err := exec.Command(dropbearkey, "-t", "ed25519", "-f", k).CombinedOutput()
		if err != nil {
			t.Fatalf("dropbearkey: %v\n%s", err, out)
		}
		if k == sshKey {
			for _, l := range strings.Split(string(out), "\n") {
				if strings.HasPrefix(l, "ssh-ed25519 ") {
					f := strings.Fields(l)
					sshPub = f[0] + " " + f[1] + " test"
				}
			}
		}
	}
	if sshPub == "" {
		t.Fatal("dropbearkey printed no ssh-ed25519 public key")
	}

	// Upstream: the toolchain and the build id.
	up := filepath.Join(dir, "up")
	os.MkdirAll(up, 0o755)
	archive := []byte("toolchain 1.2.0\n")
	os.WriteFile(filepath.Join(up, "tc-1.2.0.tar.gz"), archive, 0o644)
	sum := sha256.Sum256(archive)
	os.WriteFile(filepath.Join(up, "toolchain.sha256"), []byte(hex.EncodeToString(sum[:])+" *tc-1.2.0.tar.gz\n"), 0o644)
	os.WriteFile(filepath.Join(up, "buildos-buildid"), []byte("build-1\n"), 0o644)

	// The namespace, with the HTTP server and the controller in it.
	ns, err := netns.New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Delete(context.Background())
	ln, err := ns.Listen(ctx, "tcp", "127.0.0.1:18080")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.FileServer(http.Dir(up))}
	go hs.Serve(ln)
	defer hs.Close()
	db := filepath.Join(dir, "c.db")
	ctl := startInNS(t, ns, filepath.Join(dir, "controller.log"), bf, "controller", "--listen", "127.0.0.1:18081", "--db", db, "--auth", "required")
	defer ctl()

	// The host: QEMU with -no-reboot, its serial console in a file.
	serial := filepath.Join(dir, "serial.log")
	cmdline := "console=ttyS0 buildos.ram_reserved=0 buildos.toolchain_url=http://10.0.2.2:18080/toolchain.sha256 " +
		"buildos.controller_url=http://10.0.2.2:18081/task buildos.buildid_url=http://10.0.2.2:18080/buildos-buildid " +
		`buildos.ssh_key="` + sshPub + `" ` +
		"buildfarm.agent_arg=--fake-bootstrap buildfarm.agent_arg=--fake-build buildfarm.monitor_arg=--poll=3s"
	qargs := []string{qemu, "-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2",
		"-kernel", filepath.Join(img, image.HostOSKernel), "-initrd", filepath.Join(img, image.HostOSInitrd), "-append", cmdline,
		"-drive", "file=" + disk + ",format=raw,if=virtio", "-drive", "file=" + stateDisk + ",format=raw,if=virtio",
		"-netdev", "user,id=n,hostfwd=tcp:127.0.0.1:18022-:22", "-device", "virtio-net-pci,netdev=n",
		"-display", "none", "-monitor", "none", "-serial", "file:" + serial, "-no-reboot"}
	qemuDone := make(chan error, 1)
	stopQEMU := startInNSWait(t, ns, os.DevNull, qemuDone, qargs...)
	defer stopQEMU()
	fail := func(format string, args ...any) {
		t.Helper()
		b, _ := os.ReadFile(serial)
		c, _ := os.ReadFile(filepath.Join(dir, "controller.log"))
		t.Fatalf(format+"\n\nserial console:\n%s\n\ncontroller:\n%s\n\nQEMU: ip netns exec %s %s", append(args,
			tailOf(string(b), 6000), tailOf(string(c), 2000), ns.Name, strings.Join(qargs, " "))...)
	}

	// The agent appears at the controller.
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}}
	// The agents' key, once on the console, is registered; only then is
	// the agent served (--auth required).
	fingerprint := ""
	deadline := time.Now().Add(10 * time.Minute)
	for {
		if fingerprint == "" {
			if pub := consoleKey(serial); pub != nil {
				pubFile := filepath.Join(dir, "host-key.pub.pem")
				os.WriteFile(pubFile, pub, 0o644)
				out, err := exec.Command(bf, "controller", "key", "add", "--db", db, "--name", "hostos-test", pubFile).Output()
				if err != nil {
					fail("controller key add of the console's key: %v\n%s", err, pub)
				}
				fingerprint = strings.TrimSpace(string(out))
				t.Logf("registered the agents' key %s", fingerprint)
			}
		}
		var agents []struct {
			Name, Toolchain  string
			ToolchainVersion string `json:"toolchain_version"`
			Fingerprint      string
			Machines         []string
		}
		if resp, err := client.Get("http://127.0.0.1:18081/api/v1/agents"); err == nil {
			json.NewDecoder(resp.Body).Decode(&agents)
			resp.Body.Close()
		}
		if len(agents) > 0 {
			a := agents[0]
			if a.Toolchain != "default" || a.ToolchainVersion != "1.2.0" || len(a.Machines) != 1 || a.Machines[0] != "busybox" {
				fail("agent at the controller: %+v, want toolchain default 1.2.0 offering busybox", a)
			}
			if fingerprint == "" || a.Fingerprint != fingerprint {
				fail("agent at the controller with key %q; want the key registered from the console (%q)", a.Fingerprint, fingerprint)
			}
			t.Logf("agent %s at the controller", a.Name)
			break
		}
		select {
		case err := <-qemuDone:
			fail("QEMU ended (%v) before an agent appeared", err)
		case <-time.After(2 * time.Second):
		}
		if time.Now().After(deadline) {
			fail("no agent at the controller within 10 minutes")
		}
	}

	// The set-up, over SSH as build.
	ssh := func(user, key string, command string) (string, error) {
		cmd := exec.Command("ip", "netns", "exec", ns.Name, dbclient, "-y", "-y", "-i", key, "-p", "18022", user+"@127.0.0.1", command)
		cmd.Env = append(os.Environ(), "HOME="+dir)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	checks := []struct{ command, want string }{
		{"id -un", "build\n"},
		{"ip -4 -o addr show dev br1", " inet " + PrivateAddr + " "},
		{"cat /proc/sys/net/ipv4/ip_forward", "1\n"},
		// udhcpd runs with br1's configuration and listens on port 67
		// (0043 in /proc/net/udp).
		{"tr '\\0' ' ' </proc/$(pidof udhcpd)/cmdline", "udhcpd -a 100 /run/udhcpd.br1.conf"},
		{"grep interface /run/udhcpd.br1.conf; grep -c ':0043 ' /proc/net/udp", "interface br1\n1\n"},
		// The agent runs with br1 (the default bridge) and the key.
		{"for c in /proc/[0-9]*/cmdline; do tr '\\0' ' ' <$c; echo; done 2>/dev/null | grep ' agent --instance 1 '",
			" --bridge br1 --auth-key /state/etc/host-key.pem "},
	}
	for _, c := range checks {
		out, err := ssh("build", sshKey, c.command)
		if err != nil || !strings.Contains(out, c.want) {
			fail("ssh build@ %q: %v\n%s\nwant %q in it", c.command, err, out, c.want)
		}
	}
	for _, who := range []struct{ user, key string }{{"root", sshKey}, {"build", otherKey}} {
		if out, err := ssh(who.user, who.key, "id -un"); err == nil || strings.Contains(out, who.user+"\n") {
			fail("ssh %s@ with %s logged in (%v):\n%s", who.user, filepath.Base(who.key), err, out)
		}
	}
	b, _ := os.ReadFile(serial)
	for _, want := range []string{
		`rule="-A POSTROUTING -s 172.31.0.0/16 ! -o br1 -j MASQUERADE"`,
		// QEMU's user networking gives the host 10.0.2.3 as its name
		// server, and udhcpd gives the guests the same.
		`msg="br1 as a guest sees it" lease="172.31.`,
		` dns 10.0.2.3"`,
		"fetched=http://10.0.2.2:18080/buildos-buildid",
		"/state/etc/host-key.pem, made just now",
	} {
		if !strings.Contains(string(b), want) {
			fail("the serial console lacks %q", want)
		}
	}

	// A new build id: the monitor drains and reboots.
	os.WriteFile(filepath.Join(up, "buildos-buildid"), []byte("build-2\n"), 0o644)
	select {
	case <-qemuDone:
	case <-time.After(5 * time.Minute):
		fail("no reboot within 5 minutes of a new build id")
	}
	b, _ = os.ReadFile(serial)
	for _, want := range []string{"build id changed from build-1 to build-2", "agents drained", "rebooting", "reboot: Restarting system"} {
		if !strings.Contains(string(b), want) {
			fail("the serial console lacks %q", want)
		}
	}
}

// consoleKey returns the public key the monitor printed on the serial
// console (in file serial) for the admin to register, or nil before then.
func consoleKey(serial string) []byte {
	b, _ := os.ReadFile(serial)
	_, rest, ok := bytes.Cut(b, []byte("register its public key"))
	if !ok {
		return nil
	}
	begin := bytes.Index(rest, []byte("-----BEGIN PUBLIC KEY-----"))
	end := bytes.Index(rest, []byte("-----END PUBLIC KEY-----"))
	if begin < 0 || end < begin {
		return nil
	}
	// The serial console ends its lines with \r\n.
	return bytes.ReplaceAll(rest[begin:end+len("-----END PUBLIC KEY-----")], []byte("\r"), nil)
}

// startInNS starts a program in ns, its output into logFile; the function
// returned stops it.
func startInNS(t *testing.T, ns *netns.NS, logFile string, args ...string) func() {
	return startInNSWait(t, ns, logFile, make(chan error, 1), args...)
}

// startInNSWait is startInNS, sending the program's end to done.
func startInNSWait(t *testing.T, ns *netns.NS, logFile string, done chan error, args ...string) func() {
	t.Helper()
	out, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan error, 1)
	ended := make(chan struct{})
	go func() {
		// Pdeathsig fires when the starting thread ends: keep it.
		runtime.LockOSThread()
		defer close(ended)
		cmd := proc.Command(ctx, "ip", append([]string{"netns", "exec", ns.Name}, args...)...)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		done <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		t.Fatalf("%s: %v", args[0], err)
	}
	return func() {
		cancel()
		select {
		case <-ended:
		case <-time.After(30 * time.Second):
			t.Errorf("%s did not end within 30 s", args[0])
		}
		out.Close()
	}
}

func tailOf(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
