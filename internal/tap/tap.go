// Package tap gives a VM a network interface on a bridge of the host: a
// tap device attached to the bridge, which QEMU opens by name (-netdev
// tap,ifname=NAME), and a fresh MAC address for the guest's side.
//
// A tap is made persistent (TUNSETPERSIST) with the system calls
// themselves, as `ip tuntap add mode tap` does, so that it outlives the
// agent's descriptor until QEMU opens it; it is set up and added to the
// bridge (SIOCBRADDIF) before QEMU starts, and deleted when the VM ends
// (Delete). Taps are named bftPID-N after the process that made them, and
// made exclusively (IFF_TUN_EXCL): a name in use is refused, never
// shared. Cleanup deletes the taps whose maker is gone and that no QEMU
// holds open (a single-queue tap that a process holds refuses a second
// opener with EBUSY): what a crashed agent left behind, while a suspended
// VM that outlived its agent keeps its own.
//
// Needs root (CAP_NET_ADMIN). The bridge is the host's (Build OS sets up
// br0 and br1): Bridge checks it and returns its IPv4 address, where the
// agent serves the guest.
package tap

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/buildfarm/buildfarm/internal/proc"
)

// Prefix starts the names of the taps this package makes.
const Prefix = "bft"

// tunDevice is the clone device taps are made through.
const tunDevice = "/dev/net/tun"

var seq atomic.Uint64

// Tap is a tap device on a bridge.
type Tap struct {
	Name   string
	Bridge string
}

// New makes a tap with a fresh name (bftPID-N), sets it up and adds it to
// bridge. The caller Deletes it when the VM that opens it has ended.
func New(ctx context.Context, bridge string) (*Tap, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("tap on bridge %s: %w", bridge, err)
	}
	name := fmt.Sprintf("%s%d-%s", Prefix, os.Getpid(), strconv.FormatUint(seq.Add(1)%(36*36*36*36), 36))
	if len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("tap %s: name longer than %d bytes", name, unix.IFNAMSIZ-1)
	}
	t := &Tap{Name: name, Bridge: bridge}
	if err := t.create(); err != nil {
		return nil, err
	}
	if err := t.attach(); err != nil {
		t.Delete()
		return nil, err
	}
	return t, nil
}

// open opens the tap name through the clone device (TUNSETIFF with
// flags besides IFF_TAP and IFF_NO_PI), making it if there is none, and
// sets its persistence; the descriptor is closed before it returns.
func open(name string, flags uint16, persist int) error {
	fd, err := unix.Open(tunDevice, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		if errors.Is(err, unix.EBUSY) && flags&unix.IFF_TUN_EXCL == 0 {
			return errInUse
		}
		return fmt.Errorf("TUNSETIFF: %w", err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, persist); err != nil {
		return fmt.Errorf("TUNSETPERSIST: %w", err)
	}
	return nil
}

// create makes the persistent tap t.Name, refusing a name in use.
func (t *Tap) create() error {
	if err := open(t.Name, unix.IFF_TUN_EXCL, 1); err != nil {
		return fmt.Errorf("tap %s: %w", t.Name, err)
	}
	return nil
}

// attach sets the tap up and adds it to its bridge.
func (t *Tap) attach() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("tap %s: %w", t.Name, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(t.Name)
	if err != nil {
		return fmt.Errorf("tap %s: %w", t.Name, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return fmt.Errorf("tap %s: SIOCGIFINDEX: %w", t.Name, err)
	}
	index := ifr.Uint32()
	br, err := unix.NewIfreq(t.Bridge)
	if err != nil {
		return fmt.Errorf("tap %s: bridge %q: %w", t.Name, t.Bridge, err)
	}
	br.SetUint32(index)
	if err := unix.IoctlIfreq(fd, unix.SIOCBRADDIF, br); err != nil {
		return fmt.Errorf("tap %s: adding it to bridge %s (SIOCBRADDIF): %w", t.Name, t.Bridge, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("tap %s: SIOCGIFFLAGS: %w", t.Name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("tap %s: SIOCSIFFLAGS up: %w", t.Name, err)
	}
	return nil
}

// errInUse means a process holds the tap open.
var errInUse = errors.New("in use")

// Delete deletes the tap. QEMU must have ended: a tap still open is
// tried again for a second, then left with an error.
func (t *Tap) Delete() error {
	var err error
	for range 20 {
		if err = remove(t.Name); !errors.Is(err, errInUse) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return err
}

// remove deletes the persistent tap name by opening it and clearing its
// persistence: errInUse when a process holds it open, nil when there is
// no such tap.
func remove(name string) error {
	if _, err := net.InterfaceByName(name); err != nil {
		return nil // gone (opening it would make a new one)
	}
	// The tap goes when the descriptor that cleared its persistence is
	// closed.
	if err := open(name, 0, 0); err != nil {
		return fmt.Errorf("tap %s: delete: %w", name, err)
	}
	return nil
}

// List returns the names of the taps of this package in the calling
// thread's network namespace.
func List() ([]string, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("taps: %w", err)
	}
	var names []string
	for _, i := range ifs {
		if proc.NamePID(i.Name, Prefix) != 0 {
			names = append(names, i.Name)
		}
	}
	return names, nil
}

// Cleanup deletes the taps whose maker is gone and that no process holds
// open (an agent killed mid-task left them), and returns their names. A
// tap a running QEMU holds (a suspended VM's) stays.
func Cleanup(ctx context.Context, log *slog.Logger) ([]string, error) {
	names, err := List()
	if err != nil {
		return nil, err
	}
	var deleted []string
	var errs []error
	for _, name := range names {
		if ctx.Err() != nil {
			return deleted, ctx.Err()
		}
		if proc.Alive(proc.NamePID(name, Prefix)) {
			continue
		}
		err := remove(name)
		if errors.Is(err, errInUse) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		log.Info("deleted a leftover tap", "tap", name)
		deleted = append(deleted, name)
	}
	return deleted, errors.Join(errs...)
}

// RandomMAC returns a random unicast, locally administered MAC address.
func RandomMAC() (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random MAC: %w", err)
	}
	b[0] = b[0]&^0x01 | 0x02 // unicast, locally administered
	return net.HardwareAddr(b[:]).String(), nil
}

// Bridge checks that name is a bridge in the calling thread's network
// namespace, and returns its first IPv4 address: where the guests on it
// reach the host.
func Bridge(name string) (net.IP, error) {
	if name == "" || len(name) >= unix.IFNAMSIZ || strings.ContainsAny(name, "/ \t\n") {
		return nil, fmt.Errorf("bridge %q: not an interface name", name)
	}
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("bridge %s: no such interface (%v): make the bridge first, for example ip link add %s type bridge", name, err, name)
	}
	kind, err := linkKind(ifi.Index)
	if err != nil {
		return nil, fmt.Errorf("bridge %s: %w", name, err)
	}
	if kind != "bridge" {
		if kind == "" {
			kind = "a device"
		}
		return nil, fmt.Errorf("bridge %s: not a bridge but %s", name, kind)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return nil, fmt.Errorf("bridge %s: addresses: %w", name, err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			return n.IP.To4(), nil
		}
	}
	return nil, fmt.Errorf("bridge %s: no IPv4 address, which the guests need to reach the agent: give it one, for example ip addr add 10.0.3.1/24 dev %s", name, name)
}

// linkKind returns the kind of link index (IFLA_INFO_KIND: bridge, tun,
// veth; "" for a plain device), asked over netlink, so in the calling
// thread's namespace whatever /sys shows.
func linkKind(index int) (string, error) {
	b, err := syscall.NetlinkRIB(syscall.RTM_GETLINK, syscall.AF_UNSPEC)
	if err != nil {
		return "", fmt.Errorf("netlink: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(b)
	if err != nil {
		return "", fmt.Errorf("netlink: %w", err)
	}
	for i := range msgs {
		m := &msgs[i]
		if m.Header.Type != unix.RTM_NEWLINK || len(m.Data) < unix.SizeofIfInfomsg {
			continue
		}
		if int(int32(binary.NativeEndian.Uint32(m.Data[4:8]))) != index { // ifi_index
			continue
		}
		attrs, err := syscall.ParseNetlinkRouteAttr(m)
		if err != nil {
			return "", fmt.Errorf("netlink: %w", err)
		}
		for _, a := range attrs {
			if a.Attr.Type == unix.IFLA_LINKINFO {
				return infoKind(a.Value), nil
			}
		}
		return "", nil
	}
	return "", fmt.Errorf("interface %d: not in the netlink link dump", index)
}

// infoKind returns IFLA_INFO_KIND from the nested attributes of
// IFLA_LINKINFO.
func infoKind(b []byte) string {
	for len(b) >= unix.SizeofRtAttr {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4])
		if l < unix.SizeofRtAttr || l > len(b) {
			return ""
		}
		if typ == unix.IFLA_INFO_KIND {
			return strings.TrimRight(string(b[unix.SizeofRtAttr:l]), "\x00")
		}
		b = b[min((l+3)&^3, len(b)):]
	}
	return ""
}
