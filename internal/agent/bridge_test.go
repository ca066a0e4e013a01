package agent

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/image"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/netns"
	"github.com/buildfarm/buildfarm/internal/qemu"
	"github.com/buildfarm/buildfarm/internal/tap"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// testBridge is a bridge for a test in a network namespace of its own,
// 10.0.3.1/24, with busybox udhcpd serving 10.0.3.100-150 on it.
type testBridge struct {
	ns     *netns.NS
	name   string
	leases string // udhcpd's lease file
	udhcpd *os.Process
}

func newTestBridge(t *testing.T) *testBridge {
	t.Helper()
	testenv.NeedProgram(t, "ip")
	busybox := testenv.NeedProgram(t, "busybox")
	ctx := context.Background()
	ns, err := netns.New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Delete(context.Background()) })
	b := &testBridge{ns: ns, name: "bfbr0", leases: filepath.Join(t.TempDir(), "udhcpd.leases")}
	for _, args := range [][]string{
		{"link", "add", b.name, "type", "bridge"},
		{"addr", "add", "10.0.3.1/24", "dev", b.name},
		{"link", "set", b.name, "up"},
	} {
		if out, err := ns.Output(ctx, "ip", args...); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	conf := filepath.Join(t.TempDir(), "udhcpd.conf")
	os.WriteFile(b.leases, nil, 0o644)
	err = os.WriteFile(conf, []byte(fmt.Sprintf(`start 10.0.3.100
end 10.0.3.150
interface %s
lease_file %s
pidfile %s
auto_time 1
option subnet 255.255.255.0
option router 10.0.3.1
option lease 600
`, b.name, b.leases, filepath.Join(t.TempDir(), "udhcpd.pid"))), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	// -a: udhcpd pings an address for 2 s by default before it offers it
	// (is it free?); 100 ms is plenty on a bridge of its own.
	cmd := exec.Command("ip", "netns", "exec", ns.Name, busybox, "udhcpd", "-f", "-a", "100", conf)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	b.udhcpd = cmd.Process
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("udhcpd:\n%s", log.String())
		}
	})
	return b
}

// dumpLeases returns udhcpd's leases: IP by MAC.
func (b *testBridge) dumpLeases(t *testing.T) map[string]string {
	t.Helper()
	// SIGUSR1 makes udhcpd write its lease file, in place: a file read
	// while it is written is read again.
	if err := b.udhcpd.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	var out []byte
	var err error
	for range 20 {
		time.Sleep(200 * time.Millisecond)
		if out, err = exec.Command("busybox", "dumpleases", "-f", b.leases).CombinedOutput(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("dumpleases: %v: %s", err, out)
	}
	leases := map[string]string{}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) >= 2 {
			if _, err := net.ParseMAC(f[0]); err == nil {
				leases[f[0]] = f[1]
			}
		}
	}
	return leases
}

// taps returns the taps in the bridge's namespace.
func (b *testBridge) taps(t *testing.T) []string {
	t.Helper()
	var names []string
	if err := b.ns.Do(func() error {
		var err error
		names, err = tap.List()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return names
}

// networkTask writes a task whose step prints the guest's MAC and IPv4
// address.
func networkTask(t *testing.T) string {
	t.Helper()
	task := manifest.Task{Name: "network", Version: "1.0.0", RepositoryURL: "https://example.org/network.git",
		Machine: "busybox", Target: "x86_64-linux-gnu",
		Steps: []manifest.Step{{Operation: "configure",
			Command: `echo "clock=$(date +%s)"; for d in /sys/class/net/*; do n=${d##*/}; [ "$n" = lo ] && continue; echo "mac=$(cat "$d/address")"; echo "addr=$(ip -4 -o addr show dev "$n" | awk '{print $4}')"; break; done`}}}
	f := filepath.Join(t.TempDir(), "task.manifest")
	if err := manifest.WriteFile(f, []manifest.Manifest{task.Manifest()}); err != nil {
		t.Fatal(err)
	}
	return f
}

var (
	macRE  = regexp.MustCompile(`mac=([0-9a-f:]{17})\n`)
	addrRE = regexp.MustCompile(`addr=(10\.0\.3\.[0-9]+)/24\n`)
)

// runBridged runs the agent binary on f inside b's namespace with
// --bridge and the network task, and returns the result, the guest's
// MAC and address, and how far its clock was from the host's when the
// step ran (as in runIdentity).
func runBridged(t *testing.T, f *farm, b *testBridge, task string) (res *manifest.Result, mac, addr string, skew time.Duration) {
	t.Helper()
	mark := len(f.log.String())
	buildfarm, _ := binaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", b.ns.Name, buildfarm, "agent", "-v",
		"--bridge", b.name, "--machines", f.machines, "--tftp", f.tftp, "--accel", "tcg", "--ram", "256",
		"--registry", f.registry, "--console-links", f.links, "--start", "auto",
		"--bootstrap-startup", "60s", "--build-startup", "60s", "--build-timeout", "60s",
		"--fake-request", task, "--dump-result")
	cmd.Stdout, cmd.Stderr = &out, f
	if err := cmd.Run(); err != nil {
		t.Fatalf("agent --bridge: %v", err)
	}
	res = parseResult(t, out.String())
	if res.Status != manifest.StatusSuccess {
		t.Fatalf("network task: %v:\n%s", res.Status, out.String())
	}
	log := res.Results[0].Log
	m, a, c := macRE.FindStringSubmatch(log), addrRE.FindStringSubmatch(log), clockRE.FindStringSubmatch(log)
	if m == nil || a == nil || c == nil {
		t.Fatalf("network task's log %q: no clock, MAC or address on the bridge's network", log)
	}
	guest, _ := strconv.ParseInt(c[1], 10, 64)
	started := regexp.MustCompile(`time=(\S+) level=INFO msg=guest .*step=configure state=started`).FindStringSubmatch(since(f, mark))
	if started == nil {
		t.Fatalf("no progress report of the step in the agent's log")
	}
	host, err := time.Parse(time.RFC3339Nano, started[1])
	if err != nil {
		t.Fatal(err)
	}
	return res, m[1], a[1], time.Unix(guest, 0).Sub(host.Truncate(time.Second))
}

// TestBridge runs two tasks in a row with --bridge, both restored from
// the busybox machine's warm state (the first run bootstraps the machine
// and builds the state, booting on the bridge by DHCP too): each guest has
// a fresh locally administered MAC, its own lease from the bridge's DHCP
// server (the server's lease file lists it; the guest whose state was
// saved took none), took its start over the guest channel, has the
// host's time, and no tap is left on the bridge afterwards, not even a
// dead agent's.
func TestBridge(t *testing.T) {
	f := newFarm(t, false, image.Options{})
	b := newTestBridge(t)
	task := networkTask(t)
	// A tap a dead agent left on the bridge, which the agent deletes at
	// its start.
	if out, err := b.ns.Output(context.Background(), "ip", "tuntap", "add", "mode", "tap", "name", "bft999999-1"); err != nil {
		t.Fatalf("ip tuntap add: %v: %s", err, out)
	}

	res1, mac1, addr1, skew1 := runBridged(t, f, b, task)
	log1 := f.log.String()
	if res1.Start != StartWarm || !strings.Contains(log1, "warm state built") {
		t.Fatalf("first task started %q, want warm after the state was built", res1.Start)
	}
	mark := len(f.log.String())
	time.Sleep(2 * time.Second) // a restored clock would lag by this much
	res2, mac2, addr2, skew2 := runBridged(t, f, b, task)
	log2 := since(f, mark)
	if res2.Start != StartWarm || strings.Contains(log2, "warm state built") {
		t.Fatalf("second task started %q, want warm from the same state", res2.Start)
	}
	t.Logf("warm tasks on the bridge: %s at %s, %s at %s; clocks off the host's by %v and %v", mac1, addr1, mac2, addr2, skew1, skew2)
	for _, s := range []time.Duration{skew1, skew2} {
		if s < -2*time.Second || s > 2*time.Second {
			t.Errorf("guest clocks off the host's by %v and %v, want within 2 s", skew1, skew2)
			break
		}
	}
	for i, l := range []string{log1[:mark], log2} {
		if !strings.Contains(l, "took its start over the guest channel") {
			t.Errorf("task %d: the agent's log does not say the start went over the guest channel", i+1)
		}
	}
	if mac1 == mac2 || addr1 == addr2 {
		t.Errorf("both restored guests have MAC %s and %s, addresses %s and %s: want a fresh MAC and lease each", mac1, mac2, addr1, addr2)
	}
	for _, m := range []string{mac1, mac2} {
		hw, _ := net.ParseMAC(m)
		if hw[0]&2 == 0 || hw[0]&1 != 0 {
			t.Errorf("MAC %s: want a unicast, locally administered address", m)
		}
		if !regexp.MustCompile(`msg="VM on bridge" .*mac=` + m).MatchString(f.log.String()) {
			t.Errorf("MAC %s: not the one the agent gave a VM", m)
		}
	}
	leases := b.dumpLeases(t)
	if leases[mac1] != addr1 || leases[mac2] != addr2 {
		t.Errorf("udhcpd's leases %v: want %s at %s and %s at %s", leases, mac1, addr1, mac2, addr2)
	}
	if len(leases) != 3 {
		t.Errorf("udhcpd's leases %v: want 3, the two tasks' and the bootstrap VM's (it booted on the bridge by DHCP), and none of the VM whose state was saved (its NIC stayed down)", leases)
	}
	if names := b.taps(t); len(names) > 0 {
		t.Errorf("taps left on the bridge: %v", names)
	}
	if strings.Contains(f.log.String(), "TFTP request dropped") {
		t.Errorf("the agent dropped a guest's own TFTP request (its peer filter did not find the guest's MAC)")
	}
	if !strings.Contains(log1, `msg="deleted a leftover tap" agent=1 tap=bft999999-1`) {
		t.Errorf("the agent's log does not say it deleted the leftover tap bft999999-1")
	}
}

// TestBridgeErrors checks --bridge's errors in a namespace of its own:
// no such interface, not a bridge, a bridge without an IPv4 address.
func TestBridgeErrors(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedProgram(t, "ip")
	ctx := context.Background()
	ns, err := netns.New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Delete(ctx)
	if out, err := ns.Output(ctx, "ip", "link", "add", "bfbr0", "type", "bridge"); err != nil {
		t.Fatalf("ip link add: %v: %s", err, out)
	}
	for _, tc := range []struct{ bridge, want string }{
		{"bfnone0", "--bridge: bridge bfnone0: no such interface"},
		{"lo", "--bridge: bridge lo: not a bridge"},
		{"bfbr0", "--bridge: bridge bfbr0: no IPv4 address"},
	} {
		o := DefaultOptions()
		o.Bridge = tc.bridge
		var err error
		ns.Do(func() error { err = o.Check(); return nil })
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--bridge %s: %v, want an error saying %q", tc.bridge, err, tc.want)
		}
	}
}

// TestNormalNet: two VMs on a bridge with their own taps, MACs and TFTP
// ports have the same warm key arguments; user networking keeps its own.
func TestNormalNet(t *testing.T) {
	vm := func(tap, mac, tftp string) *qemu.Config {
		return &qemu.Config{Name: "vm", Accel: qemu.TCG, Kernel: "/m/kernel", SerialLog: "/s", QMPSocket: "/q",
			Append: "console=ttyS0 buildfarm.mode=build buildfarm.tftp=" + tftp + " buildfarm.net=dhcp",
			Net:    qemu.Net{Mode: qemu.NetTap, Tap: tap, MAC: mac}}
	}
	a, err := normalArgs(vm("bft1-1", "02:00:00:00:00:01", "10.0.3.1:23401"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := normalArgs(vm("bft2-7", "06:12:34:56:78:9a", "10.0.4.1:24401"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(a, " ") != strings.Join(b, " ") {
		t.Errorf("normal arguments of two bridged VMs differ:\n%s\n%s", a, b)
	}
	user := &qemu.Config{Name: "vm", Accel: qemu.TCG, Kernel: "/m/kernel", SerialLog: "/s", QMPSocket: "/q",
		Append: "buildfarm.tftp=10.0.2.2:23401", Net: qemu.Net{MAC: "02:00:00:00:00:01"}}
	u, err := normalArgs(user)
	if err != nil {
		t.Fatal(err)
	}
	if s := strings.Join(u, " "); !strings.Contains(s, "buildfarm.tftp=10.0.2.2:23401") || !strings.Contains(s, "mac=02:00:00:00:00:01") {
		t.Errorf("normal arguments with user networking %q: want the TFTP server and MAC kept", s)
	}
}

// TestPeerFilter sends a datagram to a socket on a bridge from another
// namespace through a veth on the bridge: the filter for the sender's MAC
// takes it, the filter for another MAC drops it. (TestBridge has the
// guests' own requests through.)
func TestPeerFilter(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedProgram(t, "ip")
	ctx := context.Background()
	host, err := netns.New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer host.Delete(ctx)
	guest, err := netns.New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer guest.Delete(ctx)
	ip := func(ns *netns.NS, args ...string) {
		t.Helper()
		if out, err := ns.Output(ctx, "ip", args...); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	ip(host, "link", "add", "bfbr0", "type", "bridge")
	ip(host, "addr", "add", "10.0.3.1/24", "dev", "bfbr0")
	ip(host, "link", "set", "bfbr0", "up")
	ip(host, "link", "add", "bfv0", "type", "veth", "peer", "name", "bfv1")
	ip(host, "link", "set", "bfv0", "master", "bfbr0", "up")
	ip(host, "link", "set", "bfv1", "netns", guest.Name)
	ip(guest, "link", "set", "bfv1", "address", "02:00:00:00:00:42")
	ip(guest, "addr", "add", "10.0.3.50/24", "dev", "bfv1")
	ip(guest, "link", "set", "bfv1", "up")

	sender, err := guest.ListenPacket(ctx, "udp4", "10.0.3.50:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	for _, tc := range []struct {
		mac  string
		pass bool
	}{{"02:00:00:00:00:42", true}, {"02:00:00:00:00:43", false}} {
		conn, err := host.ListenPacket(ctx, "udp4", "10.0.3.1:0")
		if err != nil {
			t.Fatal(err)
		}
		mac, _ := net.ParseMAC(tc.mac)
		var denied []string
		f := &peerFilter{PacketConn: conn, bridge: "bfbr0", mac: mac, arp: "/proc/thread-self/net/arp",
			denied: func(a net.Addr) { denied = append(denied, a.String()) }}
		if _, err := sender.WriteTo([]byte("hello"), conn.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		var got string
		host.Do(func() error { // the neighbour table of the host's namespace
			f.SetReadDeadline(time.Now().Add(2 * time.Second))
			b := make([]byte, 64)
			if n, from, err := f.ReadFrom(b); err == nil {
				got = string(b[:n]) + " from " + from.String()
			}
			return nil
		})
		conn.Close()
		if pass := got != ""; pass != tc.pass || !tc.pass && len(denied) != 1 {
			t.Errorf("filter for %s: got %q, dropped %v; want it passed: %v", tc.mac, got, denied, tc.pass)
		}
	}
}

func TestNeighbour(t *testing.T) {
	table := `IP address       HW type     Flags       HW address            Mask     Device
10.0.3.50        0x1         0x2         02:00:00:00:00:42     *        br1
10.0.3.51        0x1         0x0         00:00:00:00:00:00     *        br1
10.0.3.52        0x1         0x2         02:00:00:00:00:52     *        br0
`
	if mac, ok := neighbour(table, net.ParseIP("10.0.3.50"), "br1"); !ok || mac.String() != "02:00:00:00:00:42" {
		t.Errorf("neighbour 10.0.3.50 on br1 = %v, %v", mac, ok)
	}
	for _, ip := range []string{"10.0.3.51", "10.0.3.52", "10.0.3.53"} {
		if mac, ok := neighbour(table, net.ParseIP(ip), "br1"); ok {
			t.Errorf("neighbour %s on br1 = %v: want none (incomplete, another device, absent)", ip, mac)
		}
	}
}
