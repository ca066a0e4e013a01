package tftp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// link is one end of a transfer: a socket and the peer's transfer ID
// (address and port).
//
// A link reads and writes through the socket's methods, waiting in Go's
// network poller like the rest of the process, and packets from anyone
// but the peer get an "unknown transfer ID" error (RFC 1350). A direct
// link (a Dedicated client's: the worker in its guest) instead uses the
// socket's descriptor in blocking mode, connected to the peer once its
// port is known, as tftpd-hpa does: a lock-step transfer then waits for
// each packet in the kernel rather than in the poller, which in a
// single-vCPU guest under TCG halves its time (bench/README, TFTP), and
// the kernel drops packets from anyone else. The server's links are never
// direct: they share the agent's process (TestResponsive).
type link struct {
	conn   net.PacketConn
	peer   netip.AddrPort
	peerIP netip.Addr // the peer's address before its port is known
	stop   func() bool

	fd        int // -1 without one
	inet6     bool
	connected bool
	rcvtimeo  time.Duration // SO_RCVTIMEO as last set
	mu        sync.Mutex
	closed    bool

	// Segmentation offload (batch.go).
	gso, gro bool
	gsoOOB   []byte
	grobuf   []byte // a coalesced read
	oob      []byte
	pending  []byte // the packets of grobuf not yet returned
	segsize  int
	slowPeer bool // the last blocking read waited longer than spinFor
	holdP    bool // block without a scheduler hand-off (Options.Dedicated)
	polled   bool // a direct link that waits in the poller again (release)

	scratch []byte // for error packets

	// heard, when set, is set once a packet from the peer arrives.
	heard *atomic.Bool
}

// newLink prepares conn for a transfer with peer (port 0 if yet unknown),
// direct or not; cancelling ctx interrupts its reads. Call close when
// done.
func newLink(ctx context.Context, conn net.PacketConn, peer netip.AddrPort, direct bool) *link {
	l := &link{conn: conn, peer: unmap(peer), peerIP: unmap(peer).Addr(), fd: -1}
	fd, inet6, err := -1, false, errors.New("not direct")
	if direct {
		fd, inet6, err = blockingFD(conn)
	}
	if err == nil {
		l.fd, l.inet6 = fd, inet6
		if l.peer.Port() != 0 {
			l.connect()
		}
		l.stop = context.AfterFunc(ctx, func() {
			// Not after close: the number may be another socket's by then.
			l.mu.Lock()
			defer l.mu.Unlock()
			if !l.closed {
				syscall.Shutdown(fd, syscall.SHUT_RDWR)
			}
		})
	} else {
		l.stop = context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	}
	return l
}

// blockingFD returns a duplicate of conn's descriptor in blocking mode.
// (The mode is shared with conn's own descriptor, which is not used for
// I/O again; closing conn stays safe.)
func blockingFD(conn net.PacketConn) (fd int, inet6 bool, err error) {
	sc, ok := conn.(*net.UDPConn)
	if !ok {
		return -1, false, errors.New("not a UDP socket")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, false, err
	}
	cerr := raw.Control(func(f uintptr) {
		var r uintptr
		var e syscall.Errno
		r, _, e = syscall.Syscall(syscall.SYS_FCNTL, f, syscall.F_DUPFD_CLOEXEC, 0)
		if e != 0 {
			err = e
			return
		}
		fd = int(r)
	})
	if cerr != nil {
		return -1, false, cerr
	}
	if err != nil {
		return -1, false, err
	}
	if err := syscall.SetNonblock(fd, false); err != nil {
		syscall.Close(fd)
		return -1, false, err
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		syscall.Close(fd)
		return -1, false, err
	}
	_, inet6 = sa.(*syscall.SockaddrInet6)
	return fd, inet6, nil
}

// release makes a direct link read through Go's network poller from now
// on, as an indirect one does. A direct link's blocking read holds the
// goroutine's P (holdP): right for a transfer that is all the process
// does, wrong for a goroutine beside others. Each Get left such a
// goroutine dallying for a second or more after it returned, whose read
// held the worker's only P in a one-vCPU guest until the runtime's
// preemption signal, 10-20 ms later, let the worker's main goroutine run
// again, over and over: the guest idled through half of a hello task
// (bench/README.md, VM boot).
func (l *link) release() {
	if l.fd < 0 || l.polled {
		return
	}
	// The descriptor is a duplicate of the conn's: they share the flag.
	if err := syscall.SetNonblock(l.fd, true); err != nil {
		return
	}
	l.polled, l.holdP = true, false
}

func (l *link) close() {
	l.stop()
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	if l.fd >= 0 {
		syscall.Close(l.fd)
	}
	l.conn.Close()
}

func (l *link) sockaddr(a netip.AddrPort) syscall.Sockaddr {
	if l.inet6 {
		return &syscall.SockaddrInet6{Addr: netip.AddrFrom16(a.Addr().As16()).As16(), Port: int(a.Port())}
	}
	return &syscall.SockaddrInet4{Addr: a.Addr().Unmap().As4(), Port: int(a.Port())}
}

func fromSockaddr(sa syscall.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *syscall.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *syscall.SockaddrInet6:
		return unmap(netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)))
	}
	return netip.AddrPort{}
}

// connect ties the descriptor to the peer: from now on, plain read and
// write, and the kernel drops other senders' packets.
func (l *link) connect() {
	if syscall.Connect(l.fd, l.sockaddr(l.peer)) == nil {
		l.connected = true
		l.enableOffload()
	}
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

func addrPort(a net.Addr) (netip.AddrPort, error) {
	switch a := a.(type) {
	case *net.UDPAddr:
		return unmap(a.AddrPort()), nil
	case nil:
		return netip.AddrPort{}, errors.New("no address")
	}
	ap, err := netip.ParseAddrPort(a.String())
	return unmap(ap), err
}

func (l *link) sendTo(b []byte, to netip.AddrPort) error {
	var err error
	switch {
	case l.fd >= 0 && l.connected && to == l.peer:
		err = ignoreInterrupt(func() error { return l.write(b) })
	case l.fd >= 0:
		err = ignoreInterrupt(func() error { return syscall.Sendto(l.fd, b, 0, l.sockaddr(to)) })
	default:
		_, err = l.conn.WriteTo(b, net.UDPAddrFromAddrPort(to))
	}
	if err != nil && !isTransient(err) {
		return fmt.Errorf("send to %v: %w", to, err)
	}
	return nil
}

func ignoreInterrupt(f func() error) error {
	for {
		if err := f(); err != syscall.EINTR {
			return err
		}
	}
}

func (l *link) send(b []byte) error { return l.sendTo(b, l.peer) }

// sendError tells the peer why the transfer ends; its own failure does not
// matter, as the transfer is over.
func (l *link) sendError(code ErrorCode, msg string) {
	if len(msg) > 500 {
		msg = msg[:500] // within the 512 bytes every client reads
	}
	l.scratch = appendError(l.scratch[:0], code, msg)
	l.send(l.scratch)
}

// errTimeout is returned by recv when the deadline passes.
var errTimeout = errors.New("timed out")

// recv reads the next packet from the peer into buf, waiting until
// deadline. With l.peer's port 0, the first packet from the peer's address
// fixes the port (the server's transfer ID, seen by a client).
func (l *link) recv(ctx context.Context, buf []byte, deadline time.Time) ([]byte, error) {
	if l.fd < 0 || l.polled {
		if err := l.conn.SetReadDeadline(deadline); err != nil {
			return nil, err
		}
	}
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if len(l.pending) > 0 {
			// The next packet of a coalesced read, from the peer.
			n := min(l.segsize, len(l.pending))
			pkt := l.pending[:n]
			l.pending = l.pending[n:]
			l.hear()
			return pkt, nil
		}
		pkt, from, err := l.read(buf, deadline)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, errTimeout
			}
			if isTransient(err) {
				continue
			}
			return nil, fmt.Errorf("receive from %v: %w", l.peer, err)
		}
		if l.peer.Port() == 0 && from.Addr() == l.peerIP {
			l.peer = from
			if l.fd >= 0 {
				l.connect()
			}
		}
		if from != l.peer {
			l.scratch = appendError(l.scratch[:0], ErrUnknownTID, "this port serves another transfer")
			l.sendTo(l.scratch, from)
			continue
		}
		l.hear()
		return pkt, nil
	}
}

func (l *link) hear() {
	if l.heard != nil {
		l.heard.Store(true)
	}
}

// read reads one packet, from anyone, into buf (or, coalesced packets, into
// l.grobuf, keeping all but the first in l.pending).
func (l *link) read(buf []byte, deadline time.Time) ([]byte, netip.AddrPort, error) {
	if u, ok := l.conn.(*net.UDPConn); ok && (l.fd < 0 || l.polled) {
		n, from, err := u.ReadFromUDPAddrPort(buf)
		return buf[:n], unmap(from), err
	}
	if l.fd < 0 || l.polled {
		n, a, err := l.conn.ReadFrom(buf)
		if err != nil {
			return nil, netip.AddrPort{}, err
		}
		from, err := addrPort(a)
		return buf[:n], from, err
	}
	for {
		wait := time.Until(deadline)
		if wait <= 0 {
			return nil, netip.AddrPort{}, os.ErrDeadlineExceeded
		}
		// Set the kernel's timeout only when it is off by more than a
		// tenth: a lock-step transfer then makes no extra system call.
		// It is always set the first time (0 is none: the read would
		// block for ever), and to at least a microsecond, since a
		// timeval of zero is none too.
		if l.rcvtimeo == 0 || wait > l.rcvtimeo+10*time.Millisecond || wait < l.rcvtimeo*9/10 {
			wait = max(wait, time.Microsecond)
			tv := syscall.NsecToTimeval(wait.Nanoseconds())
			if err := syscall.SetsockoptTimeval(l.fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
				return nil, netip.AddrPort{}, err
			}
			l.rcvtimeo = wait
		}
		var (
			n    int
			from = l.peer
			sa   syscall.Sockaddr
			err  error
		)
		if l.gro && l.connected {
			var seg int
			n, seg, err = l.recvGRO()
			if err == nil {
				if seg > 0 && n > seg {
					l.pending, l.segsize = l.grobuf[seg:n], seg
					return l.grobuf[:seg], from, nil
				}
				return l.grobuf[:n], from, nil
			}
		} else if l.connected {
			n, err = syscall.Read(l.fd, buf)
		} else {
			n, sa, err = syscall.Recvfrom(l.fd, buf, 0)
			if err == nil {
				from = fromSockaddr(sa)
			}
		}
		switch {
		case err == syscall.EAGAIN || err == syscall.EINTR:
			continue // the loop checks the deadline
		case err != nil:
			return nil, netip.AddrPort{}, err
		}
		// After shutdown (cancellation), reads return 0 bytes at once;
		// recv then sees ctx done.
		return buf[:n], from, nil
	}
}

// isTransient tells errors after which a UDP socket still works, for
// example ICMP port unreachable reported as ECONNREFUSED.
func isTransient(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
