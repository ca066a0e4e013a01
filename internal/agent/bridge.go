package agent

// Tap networking on a host bridge (--bridge NAME), as Build OS runs its
// VMs: each VM gets a tap device of its own on the bridge (package tap),
// made before QEMU starts and deleted when the VM ends (a suspended VM
// keeps it; the next agent deletes the taps that a dead agent left and no
// QEMU holds), and a fresh random locally administered MAC. The guest
// configures its interface by DHCP from the bridge's network
// (buildfarm.net=dhcp; Build OS's br1 has a DHCP server for guests) and
// reaches the agent's TFTP server on the bridge's IPv4 address, read when
// each VM starts, on the VM's own port (--tftp-port, as with --no-netns:
// every VM shares the host's network namespace). A VM's TFTP server takes
// requests only from the address that the host's neighbour table (ARP)
// gives the VM's MAC on the bridge (peerFilter), so that the other guests
// on the bridge cannot read its task and result key or upload its result.
// Otherwise the guest reaches whatever the bridge reaches: the other VMs
// on the bridge, and, through br1's NAT, the outside.
//
// A warm start (warm.go) on a bridge: the saved guest holds the old MAC
// (virtio-net migrates it) and would hold a lease that may be another
// VM's by now, so the worker awaits its start on the guest channel, not
// over TFTP (worker.StartChannelArg, see package worker's startchannel.go):
// it takes its interface down before the save, and the agent builds the
// state at the worker's await-start event. A restored VM announces
// nothing (qemu.NetTap), gets its start over the channel as soon as its
// console connects (the host's time, random bytes, the VM's fresh MAC and
// the TFTP server), and the worker sets the MAC, asks DHCP for a new lease
// and asks for its task. The key then holds neither the tap, nor the MAC,
// nor the TFTP server, which the start names.

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/buildfarm/buildfarm/internal/console"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/qemu"
	"github.com/buildfarm/buildfarm/internal/tap"
	"github.com/buildfarm/buildfarm/internal/worker"
)

// bridged is a VM's network on the bridge.
type bridged struct {
	tftpAddr       string // the bridge's address and the VM's TFTP port
	listenTransfer func() (net.PacketConn, error)
	net            qemu.Net
	arg            string // the kernel argument for the guest's init
}

// onBridge makes r's tap on the bridge (deleted by Close, unless the VM
// is kept) and picks its MAC.
func (r *vmRun) onBridge(ctx context.Context) (*bridged, error) {
	a, s := r.a, r.s
	ip, err := tap.Bridge(a.opts.Bridge)
	if err != nil {
		return nil, fmt.Errorf("vm %s: --bridge: %w", s.name, err)
	}
	mac, err := tap.RandomMAC()
	if err != nil {
		return nil, fmt.Errorf("vm %s: %w", s.name, err)
	}
	t, err := tap.New(ctx, a.opts.Bridge)
	if err != nil {
		return nil, fmt.Errorf("vm %s: %w", s.name, err)
	}
	r.tap, r.mac = t, mac
	r.stops = append(r.stops, func() {
		if r.kept.Load() { // a suspended VM keeps its tap
			return
		}
		if err := t.Delete(); err != nil {
			a.log.Warn("deleting a VM's tap", "vm", s.name, "err", err)
		}
	})
	if s.mac != "" {
		a.log.Debug("the machine's MAC is not used on a bridge: each VM gets a fresh one", "vm", s.name, "machine-mac", s.mac)
	}
	a.log.Info("VM on bridge", "vm", s.name, "bridge", a.opts.Bridge, "tap", t.Name, "mac", mac)
	return &bridged{
		tftpAddr:       net.JoinHostPort(ip.String(), strconv.Itoa(s.port)),
		listenTransfer: func() (net.PacketConn, error) { return net.ListenPacket("udp4", net.JoinHostPort(ip.String(), "0")) },
		net:            qemu.Net{Mode: qemu.NetTap, Tap: t.Name, MAC: mac},
		arg:            "buildfarm.net=dhcp",
	}, nil
}

// peerFilter is the TFTP serving socket of a VM on a bridge: it drops the
// requests from a source address that the host's neighbour table does not
// give the VM's MAC on the bridge. A guest ARPs for the bridge's address
// before its first request, and the host learns its address and MAC from
// that (a request from an address the table does not hold is dropped;
// the guest's client sends it again). Transfers run on sockets of their
// own, with the peer the request came from.
type peerFilter struct {
	net.PacketConn
	bridge string
	mac    net.HardwareAddr
	arp    string         // the neighbour table: /proc/thread-self/net/arp
	denied func(net.Addr) // called for each request dropped
}

// ReadFrom reads the next packet from an allowed peer.
func (f *peerFilter) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		n, addr, err := f.PacketConn.ReadFrom(b)
		if err != nil || f.allowed(addr) {
			return n, addr, err
		}
		if f.denied != nil {
			f.denied(addr)
		}
	}
}

// allowed reports whether the neighbour table gives addr's IP the VM's
// MAC on the bridge.
func (f *peerFilter) allowed(addr net.Addr) bool {
	u, ok := addr.(*net.UDPAddr)
	if !ok {
		return false
	}
	table, err := os.ReadFile(f.arp)
	if err != nil {
		return false
	}
	mac, ok := neighbour(string(table), u.IP, f.bridge)
	return ok && bytes.Equal(mac, f.mac)
}

// neighbour returns the MAC of ip on device dev in table, the text of
// /proc/net/arp (IP address, HW type, Flags, HW address, Mask, Device),
// if the entry is complete (flag 0x2).
func neighbour(table string, ip net.IP, dev string) (net.HardwareAddr, bool) {
	for line := range strings.Lines(table) {
		f := strings.Fields(line)
		if len(f) < 6 || f[5] != dev || !ip.Equal(net.ParseIP(f[0])) {
			continue
		}
		flags, err := strconv.ParseUint(strings.TrimPrefix(f[2], "0x"), 16, 32)
		if err != nil || flags&0x2 == 0 {
			return nil, false
		}
		mac, err := net.ParseMAC(f[3])
		return mac, err == nil
	}
	return nil, false
}

// filterPeers wraps conn, r's TFTP serving socket on the bridge, in a
// peerFilter for r's MAC; each peer it drops is logged once.
func (r *vmRun) filterPeers(conn net.PacketConn) (net.PacketConn, error) {
	mac, err := net.ParseMAC(r.mac)
	if err != nil {
		return nil, fmt.Errorf("vm %s: %w", r.s.name, err)
	}
	var seen sync.Map
	return &peerFilter{PacketConn: conn, bridge: r.a.opts.Bridge, mac: mac, arp: "/proc/thread-self/net/arp",
		denied: func(peer net.Addr) {
			if _, dup := seen.LoadOrStore(peer.String(), true); !dup {
				r.a.log.Warn("TFTP request dropped: its source is not this VM's MAC on the bridge", "vm", r.s.name, "peer", peer)
			}
		}}, nil
}

// watchAwaitStart closes r.startAwaited when the worker says, on the
// guest channel, that it awaits its start (worker.AwaitStartEvent).
func (r *vmRun) watchAwaitStart() {
	backlog, next, cancel := r.con.Events()
	r.stops = append(r.stops, cancel)
	seen := func(line string) bool {
		f := strings.Fields(line)
		if len(f) >= 2 && f[1] == worker.AwaitStartEvent {
			r.awaitedOnce.Do(func() { close(r.startAwaited) })
			return true
		}
		return false
	}
	for _, l := range backlog {
		if seen(l) {
			return
		}
	}
	go func() {
		for l := range next {
			if seen(l) {
				return
			}
		}
	}()
}

// awaitingStart is closed when r's worker awaits its start, where a warm
// state is saved: at its first TFTP request (for worker.StartFile), or,
// on a bridge, at its await-start event on the guest channel.
func (r *vmRun) awaitingStart() <-chan struct{} {
	if r.tap != nil {
		return r.startAwaited
	}
	return r.firstRequest
}

// startRetry is the pause between tries to reach the guest channel of a
// restored VM, whose console connects just after QEMU starts.
const startRetry = 5 * time.Millisecond

// sendStart hands the worker of a VM restored on a bridge its start over
// the guest channel, within the session's startup deadline: the host's
// time, 64 random bytes, the VM's MAC and the TFTP server. It first waits
// for the worker to answer a request (proc uptime): the guest runs once
// its state is loaded, and the start's time is taken then, so that the
// guest's clock is the host's. It returns when the worker has applied
// the start (its new lease taken), or with its error.
func (r *vmRun) sendStart(ctx context.Context, tftpAddr string) error {
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(ctx, r.s.startup)
	defer cancel()
	fail := func(err error) error {
		return fmt.Errorf("vm %s: restored worker's start over the guest channel: %w", r.s.name, err)
	}
	tries := 0
	for {
		tries++
		_, err := r.con.Request(ctx, "proc", "uptime")
		if err == nil {
			break
		}
		if !errors.Is(err, console.ErrNoGuest) || ctx.Err() != nil {
			return fail(err)
		}
		select {
		case <-time.After(startRetry):
		case <-ctx.Done():
		}
	}
	running := time.Since(t0)
	st := &worker.Start{Time: time.Now(), Random: make([]byte, 64), MAC: r.mac, TFTP: tftpAddr}
	if _, err := rand.Read(st.Random); err != nil {
		return err
	}
	var b strings.Builder
	if err := manifest.Serialize(&b, []manifest.Manifest{st.Manifest()}); err != nil {
		return err
	}
	if _, err := r.con.Request(ctx, "start", b.String()); err != nil {
		return fail(err)
	}
	r.a.log.Info("VM restored: its worker took its start over the guest channel (new MAC, new lease)", "vm", r.s.name,
		"mac", r.mac, "after", time.Since(t0).Round(time.Millisecond), "guest-running", running.Round(time.Millisecond), "tries", tries)
	return nil
}

// startArg is the worker's kernel argument that makes it await its start
// where a warm state is saved: StartFile over TFTP, or, on a bridge, a
// start over the guest channel.
func (a *Agent) startArg() string {
	if a.opts.Bridge != "" {
		return worker.StartChannelArg
	}
	return worker.StartWaitArg
}

// keyPort is the warm key's tftp-port: on a bridge the start names the
// TFTP server, so any port will do.
func (a *Agent) keyPort(port int) string {
	if a.opts.Bridge != "" {
		return "from the start"
	}
	return strconv.Itoa(port)
}

// tftpParam is the worker's TFTP server parameter on the kernel command
// line.
var tftpParam = regexp.MustCompile(`(^|\s)buildfarm\.tftp=\S*`)

// normalNet leaves out of c what differs from VM to VM on a bridge: the
// tap, the MAC and the TFTP server (the start names the last two).
func normalNet(c *qemu.Config) {
	if c.Net.Mode != qemu.NetTap {
		return
	}
	c.Net.Tap, c.Net.MAC = "TAP", "02:00:00:00:00:00"
	c.Append = tftpParam.ReplaceAllString(c.Append, "${1}buildfarm.tftp=TFTP")
}

// cleanupTaps deletes the taps a dead agent left behind (those no QEMU
// holds: a suspended VM keeps its own). Part of the clean-up at the
// agent's start.
func (a *Agent) cleanupTaps(ctx context.Context) {
	if a.opts.Bridge == "" {
		return
	}
	if _, err := tap.Cleanup(ctx, a.log); err != nil {
		a.log.Warn("cleaning up taps", "err", err)
	}
}
