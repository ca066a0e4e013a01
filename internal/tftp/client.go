package tftp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"time"
)

// Options are what a client asks for. The zero value asks for nothing: a
// plain RFC 1350 transfer in lock-step with 512-byte blocks.
type Options struct {
	// BlockSize is the blksize to ask for (RFC 2348), 8 to 65464; 0 asks
	// for none.
	BlockSize int
	// WindowSize is the windowsize to ask for (RFC 7440); 0 asks for none.
	WindowSize int
	// Timeout is the retransmission timeout; from 1s, it is also asked of
	// the server, in whole seconds (RFC 2349). 0 means DefaultTimeout.
	Timeout time.Duration
	// Retries is how many times a packet is resent; 0 means
	// DefaultRetries.
	Retries int
	// TransferSize asks for tsize (RFC 2349): a Get learns the size and
	// checks that it got it all; a Put tells the size.
	TransferSize bool
	// Dedicated says the transfer is all the process does meanwhile (the
	// worker in a guest): the client then uses its socket's descriptor
	// directly, in blocking mode, and on a single CPU waits for packets
	// in the kernel without handing the Go scheduler's P over, which
	// wakes a thread a packet and, in a guest under TCG, costs about as
	// much as the transfer itself (bench/README, TFTP). Other goroutines
	// run only when the runtime preempts the wait (every 10 ms or so):
	// never in a process that serves anything (the server never does
	// this; TestResponsive).
	Dedicated bool
}

func (o Options) check() error {
	if o.BlockSize != 0 && (o.BlockSize < MinBlockSize || o.BlockSize > MaxBlockSize) {
		return fmt.Errorf("block size %d: want %d to %d", o.BlockSize, MinBlockSize, MaxBlockSize)
	}
	if o.WindowSize < 0 || o.WindowSize > MaxWindowSize {
		return fmt.Errorf("window size %d: want 1 to %d", o.WindowSize, MaxWindowSize)
	}
	if o.Timeout < 0 || o.Timeout > 255*time.Second {
		return fmt.Errorf("timeout %v: want up to 255s", o.Timeout)
	}
	return nil
}

// params are the parameters before negotiation.
func (o Options) params() params {
	p := params{blksize: DefaultBlockSize, window: 1, timeout: o.Timeout, retries: o.Retries}
	if p.timeout == 0 {
		p.timeout = DefaultTimeout
	}
	if p.retries <= 0 {
		p.retries = DefaultRetries
	}
	return p
}

// request lists the options to send; tsize is the size to tell (-1 for a
// read's 0).
func (o Options) request(tsize int64) []Option {
	var opts []Option
	if o.BlockSize != 0 {
		opts = append(opts, Option{"blksize", strconv.Itoa(o.BlockSize)})
	}
	if o.WindowSize != 0 {
		opts = append(opts, Option{"windowsize", strconv.Itoa(o.WindowSize)})
	}
	if o.Timeout >= time.Second {
		opts = append(opts, Option{"timeout", strconv.Itoa(int(o.Timeout / time.Second))})
	}
	if o.TransferSize && tsize >= 0 {
		opts = append(opts, Option{"tsize", strconv.FormatInt(tsize, 10)})
	}
	return opts
}

// Get reads the file remote from the server at addr (HOST:PORT) into w and
// returns the number of bytes read. It returns once it has acknowledged
// the last block; its socket stays open in the background for a moment
// (until ctx is done at the latest) to acknowledge the last block again
// should the server resend it (RFC 1350's dallying).
func Get(ctx context.Context, addr, remote string, w io.Writer, opt Options) (int64, error) {
	n, err := get(ctx, addr, remote, w, opt)
	if err != nil {
		return n, fmt.Errorf("tftp get %q from %s: %w", remote, addr, err)
	}
	return n, nil
}

func get(ctx context.Context, addr, remote string, w io.Writer, opt Options) (int64, error) {
	if err := opt.check(); err != nil {
		return 0, err
	}
	l, server, err := dial(ctx, addr, opt.Dedicated)
	if err != nil {
		return 0, err
	}
	if f, ok := w.(*os.File); ok && l.holdP {
		w = rawWriter{f}
	}
	tsize := int64(-1)
	if opt.TransferSize {
		tsize = 0
	}
	asked := opt.request(tsize)
	reply, err := request(ctx, l, server, appendRequest(nil, OpRead, remote, asked), opt.params())
	if err != nil {
		l.close()
		return 0, err
	}
	p := opt.params()
	first := reply
	var told int64 = -1
	switch binary.BigEndian.Uint16(reply) {
	case opOACK:
		told, err = accept(l, &p, asked, reply)
		if err != nil {
			l.close()
			return 0, err
		}
		first = appendAck(nil, 0)
	case opDATA:
		// The server ignored the options: RFC 1350.
	default:
		l.close()
		return 0, unexpected(reply, "DATA or OACK")
	}
	r := newReceiver(l, p, w)
	got, err := r.run(ctx, first)
	if err == nil {
		err = r.finish()
	}
	if err != nil {
		tellPeer(l, err)
		l.close()
		return got, err
	}
	go func() {
		defer l.close()
		r.dally(ctx)
	}()
	if told >= 0 && got != told {
		return got, fmt.Errorf("got %d bytes, but the server announced %d", got, told)
	}
	return got, nil
}

// Put writes size bytes (-1 if unknown) of r as the file remote on the
// server at addr (HOST:PORT).
func Put(ctx context.Context, addr, remote string, r io.Reader, size int64, opt Options) error {
	if err := put(ctx, addr, remote, r, size, opt); err != nil {
		return fmt.Errorf("tftp put %q to %s: %w", remote, addr, err)
	}
	return nil
}

func put(ctx context.Context, addr, remote string, src io.Reader, size int64, opt Options) error {
	if err := opt.check(); err != nil {
		return err
	}
	l, server, err := dial(ctx, addr, opt.Dedicated)
	if err != nil {
		return err
	}
	defer l.close()
	if opt.WindowSize > 1 {
		// The window must fit what the sender keeps for retransmission.
		opt.WindowSize = clampWindow(opt.WindowSize, max(opt.BlockSize, DefaultBlockSize))
	}
	asked := opt.request(size)
	reply, err := request(ctx, l, server, appendRequest(nil, OpWrite, remote, asked), opt.params())
	if err != nil {
		return err
	}
	p := opt.params()
	switch binary.BigEndian.Uint16(reply) {
	case opOACK:
		if _, err := accept(l, &p, asked, reply); err != nil {
			return err
		}
	case opACK:
		if binary.BigEndian.Uint16(reply[2:]) != 0 {
			return unexpected(reply, "ACK 0 or OACK")
		}
	default:
		return unexpected(reply, "ACK 0 or OACK")
	}
	sent, err := newSender(l, p, src).run(ctx)
	if err != nil {
		tellPeer(l, err)
		return err
	}
	if size >= 0 && sent != size {
		return fmt.Errorf("sent %d bytes, want %d", sent, size)
	}
	return nil
}

func unexpected(pkt []byte, want string) error {
	p, err := Decode(pkt)
	if err != nil {
		return err
	}
	return fmt.Errorf("got %s, want %s", packetName(p), want)
}

// dial opens the client's socket for a transfer with addr.
func dial(ctx context.Context, addr string, dedicated bool) (*link, netip.AddrPort, error) {
	server, err := netip.ParseAddrPort(addr)
	if err != nil {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, server, err
		}
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			return nil, server, fmt.Errorf("port %q: %w", port, err)
		}
		ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return nil, server, err
		}
		server = netip.AddrPortFrom(ips[0], uint16(n))
	}
	server = unmap(server)
	network := "udp6"
	if server.Addr().Is4() {
		network = "udp4"
	}
	conn, err := net.ListenUDP(network, nil)
	if err != nil {
		return nil, server, err
	}
	conn.SetReadBuffer(socketBuffer)
	conn.SetWriteBuffer(socketBuffer)
	l := newLink(ctx, conn, netip.AddrPortFrom(server.Addr(), 0), dedicated)
	l.holdP = dedicated && !spin
	return l, server, nil
}

// request sends a request until the server answers, from its transfer
// port, and returns the answer; an ERROR answer is returned as *Error.
func request(ctx context.Context, l *link, server netip.AddrPort, req []byte, p params) ([]byte, error) {
	buf := make([]byte, 4+MaxBlockSize+1)
	for tries := 0; tries <= p.retries; tries++ {
		if err := l.sendTo(req, server); err != nil {
			return nil, err
		}
		pkt, err := l.recv(ctx, buf, time.Now().Add(p.timeout))
		if err == errTimeout {
			continue
		}
		if err != nil {
			return nil, err
		}
		if len(pkt) < 4 {
			return nil, malformed("answer of %d bytes", len(pkt))
		}
		if binary.BigEndian.Uint16(pkt) == opERROR {
			return nil, peerError(pkt)
		}
		return append([]byte(nil), pkt...), nil
	}
	return nil, fmt.Errorf("no answer from %v after %d tries of %v", server, p.retries+1, p.timeout)
}

// errOACK is a server's option acknowledgment that the client refuses.
var errOACK = errors.New("bad option acknowledgment")

// accept checks a server's OACK against what was asked, sets p from it and
// returns the tsize it announced (-1 if none). A bad OACK is refused with
// ERROR 8 (RFC 2347).
func accept(l *link, p *params, asked []Option, oack []byte) (tsize int64, err error) {
	pk, err := Decode(oack)
	if err != nil {
		return -1, err
	}
	tsize = -1
	refuse := func(format string, args ...any) (int64, error) {
		msg := fmt.Sprintf(format, args...)
		l.sendError(ErrOptionRefused, msg)
		return -1, fmt.Errorf("%w: %s", errOACK, msg)
	}
	for _, o := range pk.(*OptionAck).Options {
		var want string
		for _, a := range asked {
			if a.Name == o.Name {
				want = a.Value
			}
		}
		if want == "" {
			return refuse("option %s was not asked for", o.Name)
		}
		askedN, _ := strconv.ParseInt(want, 10, 64)
		switch o.Name {
		case "blksize":
			v, err := parseUint(o.Name, o.Value, MinBlockSize, askedN)
			if err != nil {
				return refuse("%v", err)
			}
			p.blksize = int(v)
		case "windowsize":
			v, err := parseUint(o.Name, o.Value, 1, askedN)
			if err != nil {
				return refuse("%v", err)
			}
			p.window = int(v)
		case "timeout":
			// The server's timer; the client keeps its own.
			if _, err := parseUint(o.Name, o.Value, 1, 255); err != nil {
				return refuse("%v", err)
			}
		case "tsize":
			v, err := parseUint(o.Name, o.Value, 0, 1<<62)
			if err != nil {
				return refuse("%v", err)
			}
			tsize = v
		}
	}
	return tsize, nil
}
