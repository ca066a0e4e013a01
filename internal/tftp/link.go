package tftp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// link is one end of a transfer: a socket and the peer's transfer ID
// (address and port). It reads and writes through the socket's own
// methods, so that a transfer waits for packets in Go's network poller,
// like any other I/O of the process: a server in the agent shares the
// process's threads with its HTTP, signals and other VMs' transfers.
// Packets from anyone but the peer get an "unknown transfer ID" error
// (RFC 1350) and are otherwise ignored.
type link struct {
	conn   net.PacketConn
	peer   netip.AddrPort
	peerIP netip.Addr // the peer's address before its port is known
	stop   func() bool

	scratch []byte // for error packets

	// heard, when set, is set once a packet from the peer arrives.
	heard *atomic.Bool
}

// newLink prepares conn for a transfer with peer (port 0 if yet unknown);
// cancelling ctx interrupts its reads. Call close when done.
func newLink(ctx context.Context, conn net.PacketConn, peer netip.AddrPort) *link {
	l := &link{conn: conn, peer: unmap(peer), peerIP: unmap(peer).Addr()}
	l.stop = context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	return l
}

func (l *link) close() {
	l.stop()
	l.conn.Close()
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
	if u, ok := l.conn.(*net.UDPConn); ok {
		_, err = u.WriteToUDPAddrPort(b, to)
	} else {
		_, err = l.conn.WriteTo(b, net.UDPAddrFromAddrPort(to))
	}
	if err != nil && !isTransient(err) {
		return fmt.Errorf("send to %v: %w", to, err)
	}
	return nil
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
	if err := l.conn.SetReadDeadline(deadline); err != nil {
		return nil, err
	}
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		pkt, from, err := l.read(buf)
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
		}
		if from != l.peer {
			l.scratch = appendError(l.scratch[:0], ErrUnknownTID, "this port serves another transfer")
			l.sendTo(l.scratch, from)
			continue
		}
		if l.heard != nil {
			l.heard.Store(true)
		}
		return pkt, nil
	}
}

// read reads one packet, from anyone, into buf.
func (l *link) read(buf []byte) ([]byte, netip.AddrPort, error) {
	if u, ok := l.conn.(*net.UDPConn); ok {
		n, from, err := u.ReadFromUDPAddrPort(buf)
		return buf[:n], unmap(from), err
	}
	n, a, err := l.conn.ReadFrom(buf)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	from, err := addrPort(a)
	return buf[:n], from, err
}

// isTransient tells errors after which a UDP socket still works, for
// example ICMP port unreachable reported as ECONNREFUSED.
func isTransient(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
