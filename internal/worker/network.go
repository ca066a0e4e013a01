package worker

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// NetEnv is the environment variable through which the guest's init hands
// a static network to the worker, as "NIC ADDRESS/PREFIX GATEWAY" (package
// image's init: buildfarm.net=user, 10.0.2.15/24 via 10.0.2.2). The worker
// then sets it up itself, over netlink: under TCG each of the four ip
// processes this replaces cost the guest 20-40 ms. Before its first
// request it brings NIC up and gives it the address (the agent is on
// NIC's network); lo and the default route follow at the lowest priority
// while it waits for the agent's answers, and it waits for them before it
// touches its work directory (awaitReady): together they took another
// 30-60 ms of the guest's boot. Unset, the worker leaves the network as it
// finds it.
const NetEnv = "BUILDFARM_NET"

// StaticNet is a static IPv4 network of one interface.
type StaticNet struct {
	NIC     string
	Addr    netip.Prefix // the interface's address and its network's prefix
	Gateway netip.Addr   // the default route's
}

// ParseStaticNet reads s, NetEnv's value: "NIC ADDRESS/PREFIX GATEWAY".
func ParseStaticNet(s string) (StaticNet, error) {
	f := strings.Fields(s)
	if len(f) != 3 {
		return StaticNet{}, fmt.Errorf("%s %q: want NIC ADDRESS/PREFIX GATEWAY", NetEnv, s)
	}
	n := StaticNet{NIC: f[0]}
	if len(n.NIC) >= unix.IFNAMSIZ || strings.ContainsAny(n.NIC, "/") {
		return StaticNet{}, fmt.Errorf("%s %q: %q is not an interface name", NetEnv, s, n.NIC)
	}
	var err error
	if n.Addr, err = netip.ParsePrefix(f[1]); err != nil || !n.Addr.Addr().Is4() {
		return StaticNet{}, fmt.Errorf("%s %q: %q is not an IPv4 ADDRESS/PREFIX", NetEnv, s, f[1])
	}
	if n.Gateway, err = netip.ParseAddr(f[2]); err != nil || !n.Gateway.Is4() || !n.Addr.Masked().Contains(n.Gateway) {
		return StaticNet{}, fmt.Errorf("%s %q: gateway %q is not an IPv4 address on %s", NetEnv, s, f[2], n.Addr.Masked())
	}
	return n, nil
}

// setNetwork sets up the static network NetEnv names, if any: NIC and
// its address now, lo and the default route in the background (see
// awaitNetwork).
func (w *Worker) setNetwork() error {
	v := os.Getenv(NetEnv)
	if v == "" {
		return nil
	}
	n, err := ParseStaticNet(v)
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := n.Set(); err != nil {
		return err
	}
	w.log.Info("network set", "nic", n.NIC, "addr", n.Addr, "gateway", n.Gateway, "took", time.Since(t0).Round(time.Millisecond))
	done := make(chan error, 1)
	go func() {
		// At the lowest priority (best effort), in a thread of its own
		// that ends with the goroutine: the kernel's share of the work
		// runs in it too.
		runtime.LockOSThread()
		unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 19)
		t0 := time.Now()
		err := n.Finish()
		w.log.Debug("lo up and default route added", "took", time.Since(t0).Round(time.Millisecond), "err", err)
		done <- err
	}()
	w.netDone = sync.OnceValue(func() error { return <-done })
	return nil
}

// awaitNetwork waits until the static network is complete (lo up, the
// default route), if the worker sets one up.
func (w *Worker) awaitNetwork() error {
	if w.netDone == nil {
		return nil
	}
	return w.netDone()
}

// Set brings n.NIC up and gives it its address, over one rtnetlink
// socket. An address already there is an error (EEXIST).
func (n StaticNet) Set() error {
	return rtSession(func(s int) error {
		nic, err := setLinkUp(s, n.NIC)
		if err != nil {
			return err
		}
		a := n.Addr.Addr().As4()
		addr := append(ifAddrMsg(nic, n.Addr.Bits()), rtAttr(unix.IFA_LOCAL, a[:])...)
		addr = append(addr, rtAttr(unix.IFA_ADDRESS, a[:])...)
		if err := rtRequest(s, unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, addr); err != nil {
			return fmt.Errorf("network: address %s on %s: %w", n.Addr, n.NIC, err)
		}
		return nil
	})
}

// Finish brings lo up and adds the default route through n.Gateway on
// n.NIC, which Set brought up, over one rtnetlink socket. A default route
// already there is an error (EEXIST).
func (n StaticNet) Finish() error {
	return rtSession(func(s int) error {
		if _, err := setLinkUp(s, "lo"); err != nil {
			return err
		}
		nic, err := linkIndex(s, n.NIC)
		if err != nil {
			return err
		}
		g := n.Gateway.As4()
		route := append(defaultRouteMsg(), rtAttr(unix.RTA_GATEWAY, g[:])...)
		route = append(route, rtAttr(unix.RTA_OIF, binary.NativeEndian.AppendUint32(nil, uint32(nic)))...)
		if err := rtRequest(s, unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, route); err != nil {
			return fmt.Errorf("network: default route via %s on %s: %w", n.Gateway, n.NIC, err)
		}
		return nil
	})
}

// rtSession calls f with a bound rtnetlink socket, and closes it.
func rtSession(f func(s int) error) error {
	s, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("network: rtnetlink socket: %w", err)
	}
	defer unix.Close(s)
	if err := unix.Bind(s, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("network: rtnetlink socket: %w", err)
	}
	return f(s)
}

// linkIndex is the index of the interface name.
func linkIndex(s int, name string) (int, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, fmt.Errorf("network: interface %s: %w", name, err)
	}
	if err := unix.IoctlIfreq(s, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, fmt.Errorf("network: interface %s: %w", name, err)
	}
	return int(ifr.Uint32()), nil
}

// setLinkUp brings the interface name up and returns its index.
func setLinkUp(s int, name string) (int, error) {
	i, err := linkIndex(s, name)
	if err != nil {
		return 0, err
	}
	if err := rtRequest(s, unix.RTM_NEWLINK, 0, linkUp(i)); err != nil {
		return 0, fmt.Errorf("network: bringing %s up: %w", name, err)
	}
	return i, nil
}

// linkUp is the body of an RTM_NEWLINK that sets IFF_UP on link index.
func linkUp(index int) []byte {
	m := unix.IfInfomsg{Family: unix.AF_UNSPEC, Index: int32(index), Flags: unix.IFF_UP, Change: unix.IFF_UP}
	return structBytes(&m, unix.SizeofIfInfomsg)
}

// ifAddrMsg is the head of an RTM_NEWADDR of an IPv4 address on link
// index.
func ifAddrMsg(index, bits int) []byte {
	m := unix.IfAddrmsg{Family: unix.AF_INET, Prefixlen: uint8(bits), Scope: unix.RT_SCOPE_UNIVERSE, Index: uint32(index)}
	return structBytes(&m, unix.SizeofIfAddrmsg)
}

// defaultRouteMsg is the head of an RTM_NEWROUTE of the IPv4 default
// route in the main table.
func defaultRouteMsg() []byte {
	m := unix.RtMsg{Family: unix.AF_INET, Table: unix.RT_TABLE_MAIN, Protocol: unix.RTPROT_BOOT,
		Scope: unix.RT_SCOPE_UNIVERSE, Type: unix.RTN_UNICAST}
	return structBytes(&m, unix.SizeofRtMsg)
}

func structBytes[T any](p *T, size int) []byte {
	return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(p)), size)...)
}

// rtAttr is a route attribute of type t with data, padded to 4 bytes.
func rtAttr(t uint16, data []byte) []byte {
	l := unix.SizeofRtAttr + len(data)
	b := make([]byte, (l+unix.RTA_ALIGNTO-1) & ^(unix.RTA_ALIGNTO-1))
	binary.NativeEndian.PutUint16(b[0:], uint16(l))
	binary.NativeEndian.PutUint16(b[2:], t)
	copy(b[unix.SizeofRtAttr:], data)
	return b
}

// rtRequest sends one rtnetlink request on s and waits for its
// acknowledgement; the kernel's refusal is the error.
func rtRequest(s int, typ, flags uint16, body []byte) error {
	const seq = 1
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	binary.NativeEndian.PutUint32(msg[0:], uint32(unix.SizeofNlMsghdr+len(body)))
	binary.NativeEndian.PutUint16(msg[4:], typ)
	binary.NativeEndian.PutUint16(msg[6:], flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:], seq)
	msg = append(msg, body...)
	if err := unix.Sendto(s, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 8192)
	for {
		k, _, err := unix.Recvfrom(s, buf, 0)
		if err != nil {
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:k])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Type != unix.NLMSG_ERROR || m.Header.Seq != seq {
				continue
			}
			if len(m.Data) < 4 {
				return fmt.Errorf("short netlink acknowledgement")
			}
			if e := int32(binary.NativeEndian.Uint32(m.Data)); e != 0 {
				return unix.Errno(-e)
			}
			return nil
		}
	}
}
