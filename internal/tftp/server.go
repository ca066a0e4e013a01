package tftp

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Server serves the files beneath Root. Its zero value with a Root serves
// reads of every file beneath it and refuses writes.
type Server struct {
	// Root is the directory that every name resolves beneath.
	Root string
	// Rules map request names; with rules, a request that no rule maps is
	// refused, and a write needs a P rule. Without rules, names are taken
	// relative to Root, and writes need AllowPut.
	Rules    []Rule
	AllowPut bool
	// MaxPutSize bounds one upload and MaxTotalPut all the uploads the
	// server keeps, in bytes; 0 for no limit.
	MaxPutSize, MaxTotalPut int64
	// PutLimit, when set, decides each upload by its name beneath Root
	// (after the rules): it returns the most bytes that file may have (0:
	// MaxPutSize alone), or an error, which refuses the upload and is
	// what the client is told. MaxPutSize bounds every upload all the
	// same.
	PutLimit func(name string) (int64, error)
	// ReadOnce, when set, names the files (beneath Root, after the rules)
	// served to one reader only: the first read request that opens such a
	// file removes it, and later requests find no file.
	ReadOnce func(name string) bool
	// MaxTransfers bounds the transfers at a time; 0 means 64. When all
	// are under way, a new request takes the slot of the oldest transfer
	// whose peer has not answered for StallEvict, so that peers that
	// request and never answer cannot lock others out.
	MaxTransfers int
	// StallTimeout ends a transfer whose peer sent nothing since its
	// request, whatever timeout it asked for; 0 means DefaultStallTimeout.
	StallTimeout time.Duration
	// Timeout is the retransmission timeout unless a client asks for
	// another (RFC 2349), and Retries how many times a packet is resent;
	// 0 means DefaultTimeout and DefaultRetries.
	Timeout time.Duration
	Retries int
	// Log receives one record a request; nil discards them.
	Log *slog.Logger
	// OnRequest, when set, is called with each request once its transfer
	// ended (or it was refused).
	OnRequest func(Request)
	// ListenTransfer opens the socket of a transfer (its transfer ID, a
	// new port). The default listens on the serving socket's address,
	// port 0; the agent replaces it to open the socket inside a VM's
	// network namespace.
	ListenTransfer func() (net.PacketConn, error)

	totalPut atomic.Int64
	tmpSeq   atomic.Uint64
}

// Request is one request the server received, for logs and diagnostics.
type Request struct {
	Op       Op
	Filename string            // as the client sent it
	Resolved string            // beneath Root, after the rules; "" if refused before
	Peer     net.Addr          // the client
	Options  map[string]string // as the client sent them
	Err      error             // why it failed; nil if it succeeded
	Bytes    int64             // payload bytes transferred
	Duration time.Duration
}

// LogValue makes a Request readable in structured logs.
func (r Request) LogValue() slog.Value {
	attrs := []slog.Attr{
		slog.String("op", r.Op.String()),
		slog.String("file", r.Filename),
		slog.String("resolved", r.Resolved),
		slog.Any("peer", r.Peer),
		slog.Int64("bytes", r.Bytes),
		slog.Duration("duration", r.Duration),
	}
	if len(r.Options) > 0 {
		attrs = append(attrs, slog.Any("options", r.Options))
	}
	if r.Err != nil {
		attrs = append(attrs, slog.String("error", r.Err.Error()))
	}
	return slog.GroupValue(attrs...)
}

// Serve serves requests arriving on conn until ctx is done, then stops the
// transfers under way and returns nil. conn stays open: it is the
// caller's.
func (s *Server) Serve(ctx context.Context, conn net.PacketConn) error {
	_, err := s.serve(ctx, conn, 0)
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return nil
	}
	return err
}

// ServeIdle serves requests arriving on conn until idle passes with no
// request and no transfer under way (bbot's serve(timeout)), and reports
// whether any request came. When ctx is done first, it stops the
// transfers and returns ctx's error.
func (s *Server) ServeIdle(ctx context.Context, conn net.PacketConn, idle time.Duration) (served bool, err error) {
	if idle <= 0 {
		return false, fmt.Errorf("tftp: idle time %v is not positive", idle)
	}
	return s.serve(ctx, conn, idle)
}

// serving is the state of one call of serve.
type serving struct {
	s    *Server
	root *os.Root
	conn net.PacketConn
	log  *slog.Logger

	mu     sync.Mutex
	active map[netip.AddrPort]*slot
	last   time.Time // of the last request or transfer end
	wg     sync.WaitGroup
}

// slot is a transfer under way.
type slot struct {
	start   time.Time
	heard   atomic.Bool // the peer sent a packet since its request
	evicted atomic.Bool // a new request took the slot
	cancel  context.CancelFunc
}

// Stalled peers: a peer that requests and never answers.
const (
	// DefaultStallTimeout is how long a transfer waits for its peer's
	// first packet (three tries of DefaultTimeout).
	DefaultStallTimeout = 3 * DefaultTimeout
	// StallEvict is how long a peer may be silent since its request
	// before a new request, finding every slot taken, takes its slot.
	StallEvict = 500 * time.Millisecond
)

// evictStalled frees the slot of the transfer whose peer has been silent
// the longest since its request, if that is StallEvict or more, and
// reports whether it did. v.mu is held.
func (v *serving) evictStalled() bool {
	var oldest netip.AddrPort
	var o *slot
	for peer, sl := range v.active {
		if !sl.heard.Load() && (o == nil || sl.start.Before(o.start)) {
			oldest, o = peer, sl
		}
	}
	if o == nil || time.Since(o.start) < StallEvict {
		return false
	}
	o.evicted.Store(true)
	o.cancel()
	delete(v.active, oldest)
	v.log.Warn("tftp: busy, the slot of a silent peer goes to a new request", "silent", oldest, "since", o.start)
	return true
}

func (s *Server) serve(ctx context.Context, conn net.PacketConn, idle time.Duration) (served bool, err error) {
	root, err := os.OpenRoot(s.Root)
	if err != nil {
		return false, fmt.Errorf("tftp root: %w", err)
	}
	defer root.Close()
	v := &serving{s: s, root: root, conn: conn, log: s.Log, active: map[netip.AddrPort]*slot{}, last: time.Now()}
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	maxTransfers := s.MaxTransfers
	if maxTransfers <= 0 {
		maxTransfers = 64
	}

	// Transfers run under their own context: when idle ends the serving,
	// those under way finish; when ctx ends, they stop.
	tctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		v.wg.Wait()
		conn.SetReadDeadline(time.Time{})
	}()
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()

	buf := make([]byte, maxRequest+1)
	reply := make([]byte, 0, 600)
	for {
		deadline := time.Time{}
		if idle > 0 {
			v.mu.Lock()
			busy, last := len(v.active) > 0, v.last
			v.mu.Unlock()
			if busy {
				deadline = time.Now().Add(idle)
			} else if deadline = last.Add(idle); !time.Now().Before(deadline) {
				return served, nil
			}
		}
		if err := conn.SetReadDeadline(deadline); err != nil {
			return served, fmt.Errorf("tftp: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return served, err
		}
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return served, ctx.Err()
			}
			if errors.Is(err, os.ErrDeadlineExceeded) || isTransient(err) {
				continue
			}
			return served, fmt.Errorf("tftp: receive on %v: %w", conn.LocalAddr(), err)
		}
		peer, err := addrPort(from)
		if err != nil || peer.Port() == 0 {
			continue
		}
		pkt := buf[:n]
		p, err := Decode(pkt)
		if err != nil || n > maxRequest {
			if n > maxRequest {
				err = malformed("request of more than %d bytes", maxRequest)
			}
			v.log.Debug("tftp: malformed request", "peer", from, "error", err)
			if n >= 2 && binary.BigEndian.Uint16(pkt) != opERROR {
				reply = appendError(reply[:0], ErrIllegal, err.Error())
				conn.WriteTo(reply, from)
			}
			continue
		}
		req, ok := p.(*RequestPacket)
		if !ok {
			if _, isErr := p.(*Error); !isErr {
				reply = appendError(reply[:0], ErrIllegal, fmt.Sprintf("this port takes read and write requests, not %s", packetName(p)))
				conn.WriteTo(reply, from)
			}
			continue
		}
		served = true
		v.mu.Lock()
		v.last = time.Now()
		if v.active[peer] != nil {
			// The client resent its request: the transfer is under way.
			v.mu.Unlock()
			continue
		}
		if len(v.active) >= maxTransfers && !v.evictStalled() {
			v.mu.Unlock()
			v.log.Warn("tftp: busy, request refused", "peer", from, "file", req.Filename, "transfers", maxTransfers)
			reply = appendError(reply[:0], ErrUndefined, fmt.Sprintf("server busy with %d transfers; retry later", maxTransfers))
			conn.WriteTo(reply, from)
			continue
		}
		sctx, cancel := context.WithCancel(tctx)
		sl := &slot{start: time.Now(), cancel: cancel}
		v.active[peer] = sl
		v.wg.Add(1)
		v.mu.Unlock()
		go v.transfer(sctx, sl, req, peer, from)
	}
}

func packetName(p Packet) string {
	switch p.(type) {
	case *Data:
		return "DATA"
	case *Ack:
		return "ACK"
	case *OptionAck:
		return "OACK"
	case *Error:
		return "ERROR"
	}
	return "a request"
}

// done marks the transfer sl of peer ended.
func (v *serving) done(peer netip.AddrPort, sl *slot) {
	v.mu.Lock()
	if v.active[peer] == sl { // Not if it was evicted and peer came again.
		delete(v.active, peer)
	}
	v.last = time.Now()
	v.mu.Unlock()
}

func (v *serving) listen() (net.PacketConn, error) {
	if v.s.ListenTransfer != nil {
		return v.s.ListenTransfer()
	}
	network, ip := "udp", ""
	if a, ok := v.conn.LocalAddr().(*net.UDPAddr); ok {
		network = "udp6"
		if a.IP.To4() != nil {
			network = "udp4"
		}
		if !a.IP.IsUnspecified() {
			ip = a.IP.String()
		}
	}
	c, err := net.ListenPacket(network, net.JoinHostPort(ip, "0"))
	if err != nil {
		return nil, err
	}
	if u, ok := c.(*net.UDPConn); ok {
		u.SetReadBuffer(socketBuffer)
		u.SetWriteBuffer(socketBuffer)
	}
	return c, nil
}

// socketBuffer is the size asked for the buffers of transfer sockets.
const socketBuffer = 4 << 20

func (v *serving) transfer(ctx context.Context, sl *slot, req *RequestPacket, peer netip.AddrPort, from net.Addr) {
	defer v.wg.Done()
	defer sl.cancel()
	start := time.Now()
	stall := v.s.StallTimeout
	if stall <= 0 {
		stall = DefaultStallTimeout
	}
	var stalled atomic.Bool
	watch := time.AfterFunc(stall, func() {
		if !sl.heard.Load() {
			stalled.Store(true)
			sl.cancel()
		}
	})
	defer watch.Stop()
	r := Request{Op: req.Op, Filename: req.Filename, Peer: from}
	if len(req.Options) > 0 {
		r.Options = make(map[string]string, len(req.Options))
		for _, o := range req.Options {
			r.Options[o.Name] = o.Value
		}
	}
	var dally *receiver
	conn, err := v.listen()
	if err != nil {
		err = fmt.Errorf("open a transfer socket: %w", err)
		v.conn.WriteTo(appendError(nil, ErrUndefined, "server cannot open a transfer socket"), from)
	} else {
		l := newLink(ctx, conn, peer, false)
		l.heard = &sl.heard
		defer l.close()
		if req.Op == OpRead {
			r.Bytes, err = v.read(ctx, l, req, &r.Resolved)
		} else {
			r.Bytes, dally, err = v.write(ctx, l, req, &r.Resolved)
		}
	}
	r.Duration = time.Since(start)
	switch {
	case stalled.Load():
		err = fmt.Errorf("the peer sent nothing in %v since its request", stall)
	case sl.evicted.Load():
		err = fmt.Errorf("the peer sent nothing since its request, and a new request took its slot: %w", err)
	}
	if err != nil {
		r.Err = fmt.Errorf("%v %q from %v: %w", req.Op, req.Filename, from, err)
	}
	v.done(peer, sl)
	if r.Err != nil {
		v.log.Warn("tftp: request failed", "request", r)
	} else {
		v.log.Info("tftp: request", "request", r)
	}
	if v.s.OnRequest != nil {
		v.s.OnRequest(r)
	}
	if dally != nil {
		dally.dally(ctx)
	}
}

// negotiation is the outcome of a request's options.
type negotiation struct {
	p     params
	tsize int64 // -1 when not asked
	oack  []Option
}

func (s *Server) negotiate(req *RequestPacket) (*negotiation, *Error) {
	n := &negotiation{tsize: -1, p: params{blksize: DefaultBlockSize, window: 1, timeout: s.Timeout, retries: s.Retries}}
	if n.p.timeout <= 0 {
		n.p.timeout = DefaultTimeout
	}
	if n.p.retries <= 0 {
		n.p.retries = DefaultRetries
	}
	seen := map[string]bool{}
	var window int64 = 1
	for _, o := range req.Options {
		if seen[o.Name] {
			continue
		}
		seen[o.Name] = true
		var (
			v   int64
			err error
		)
		switch o.Name {
		case "blksize":
			v, err = parseUint(o.Name, o.Value, MinBlockSize, MaxBlockSize)
			n.p.blksize = int(v)
		case "timeout":
			v, err = parseUint(o.Name, o.Value, 1, 255)
			n.p.timeout = time.Duration(v) * time.Second
		case "tsize":
			v, err = parseUint(o.Name, o.Value, 0, 1<<62)
			n.tsize = v
		case "windowsize":
			window, err = parseUint(o.Name, o.Value, 1, MaxWindowSize)
		default:
			continue // unknown options are not acknowledged (RFC 2347)
		}
		if err != nil {
			return nil, &Error{Code: ErrOptionRefused, Message: err.Error()}
		}
		n.oack = append(n.oack, o)
	}
	n.p.window = clampWindow(int(window), n.p.blksize)
	for i, o := range n.oack {
		switch o.Name {
		case "windowsize":
			n.oack[i].Value = strconv.Itoa(n.p.window)
		case "blksize", "timeout":
			v, _ := strconv.ParseInt(o.Value, 10, 64)
			n.oack[i].Value = strconv.FormatInt(v, 10)
		}
	}
	return n, nil
}

// resolve maps a request's name to a path beneath the root, or refuses it.
func (s *Server) resolve(op Op, name string) (string, *Error) {
	verb := map[Op]string{OpRead: "reading", OpWrite: "writing"}[op]
	if len(s.Rules) > 0 {
		mapped, ok := "", false
		for _, r := range s.Rules {
			if mapped, ok = r.Apply(op, name); ok {
				break
			}
		}
		if !ok {
			return "", &Error{Code: ErrAccess, Message: fmt.Sprintf("no rule of the server maps %q for %s", truncate(name), verb)}
		}
		name = strings.TrimLeft(mapped, "/")
	} else {
		if op == OpWrite && !s.AllowPut {
			return "", &Error{Code: ErrAccess, Message: "this server accepts no uploads"}
		}
		if strings.HasPrefix(name, "/") {
			return "", &Error{Code: ErrAccess, Message: fmt.Sprintf("absolute name %q refused: name a file relative to the server's root", truncate(name))}
		}
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", &Error{Code: ErrAccess, Message: fmt.Sprintf("name %q refused: \"..\" may not leave the server's root", truncate(name))}
		}
	}
	clean := path.Clean(name)
	if clean == "." || clean == "" {
		return "", &Error{Code: ErrAccess, Message: fmt.Sprintf("name %q refused: it names the server's root directory", truncate(name))}
	}
	return clean, nil
}

// openError turns a failure to open name into the error the client gets.
func openError(name string, err error) *Error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return &Error{Code: ErrNotFound, Message: fmt.Sprintf("no file %q on the server", truncate(name))}
	case errors.Is(err, fs.ErrPermission):
		return &Error{Code: ErrAccess, Message: fmt.Sprintf("permission denied for %q", truncate(name))}
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return &Error{Code: ErrDiskFull, Message: "disk full on the server"}
	}
	// Escapes through symlinks, loops, names too long and the like: say
	// why, without the server's paths.
	why := err
	var pe *fs.PathError
	if errors.As(err, &pe) {
		why = pe.Err
	}
	return &Error{Code: ErrAccess, Message: fmt.Sprintf("access to %q refused: %v", truncate(name), why)}
}

// refuse tells the client why, and returns that as the transfer's error.
func refuse(l *link, e *Error) error {
	l.sendError(e.Code, e.Message)
	return e
}

// checkMode refuses any mode but octet.
func checkMode(req *RequestPacket) *Error {
	if req.Mode == modeOctet {
		return nil
	}
	return &Error{Code: ErrUndefined, Message: fmt.Sprintf("mode %q is not supported: use octet (binary) mode", truncate(req.Mode))}
}

func (v *serving) read(ctx context.Context, l *link, req *RequestPacket, resolved *string) (int64, error) {
	if e := checkMode(req); e != nil {
		return 0, refuse(l, e)
	}
	n, e := v.s.negotiate(req)
	if e != nil {
		return 0, refuse(l, e)
	}
	name, e := v.s.resolve(OpRead, req.Filename)
	if e != nil {
		return 0, refuse(l, e)
	}
	*resolved = name
	// O_NONBLOCK: opening a FIFO must not hang the transfer.
	f, err := v.root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return 0, fmt.Errorf("%w (%w)", refuse(l, openError(req.Filename, err)), err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, refuse(l, openError(req.Filename, err))
	}
	if !fi.Mode().IsRegular() {
		return 0, refuse(l, &Error{Code: ErrAccess, Message: fmt.Sprintf("%q is not a regular file", truncate(req.Filename))})
	}
	if v.s.ReadOnce != nil && v.s.ReadOnce(name) {
		// Of readers that opened it at once, the one whose removal
		// succeeds gets it.
		if err := v.root.Remove(name); err != nil {
			return 0, fmt.Errorf("%w (%w)", refuse(l, openError(req.Filename, fs.ErrNotExist)), err)
		}
	}
	if len(n.oack) > 0 {
		for i, o := range n.oack {
			if o.Name == "tsize" {
				n.oack[i].Value = strconv.FormatInt(fi.Size(), 10)
			}
		}
		if err := handshake(ctx, l, appendOACK(nil, n.oack), n.p); err != nil {
			return 0, err
		}
	}
	// Small blocks are read ahead in bigger chunks; big ones straight
	// into their packets.
	var src io.Reader = f
	if n.p.blksize < 8192 {
		src = bufio.NewReaderSize(f, 64<<10)
	}
	sent, err := newSender(l, n.p, src).run(ctx)
	tellPeer(l, err)
	return sent, err
}

// handshake sends an OACK for a read request and waits for its ACK 0.
func handshake(ctx context.Context, l *link, oack []byte, p params) error {
	buf := make([]byte, 4+DefaultBlockSize) // an ACK or an ERROR
	for tries := 0; ; tries++ {
		if tries > p.retries {
			return fmt.Errorf("no ACK of the option acknowledgment from %v after %d tries of %v", l.peer, tries, p.timeout)
		}
		if err := l.send(oack); err != nil {
			return err
		}
		deadline := time.Now().Add(p.timeout)
		for {
			pkt, err := l.recv(ctx, buf, deadline)
			if err == errTimeout {
				break
			}
			if err != nil {
				return err
			}
			if len(pkt) < 4 {
				continue
			}
			switch binary.BigEndian.Uint16(pkt) {
			case opACK:
				if binary.BigEndian.Uint16(pkt[2:]) == 0 {
					return nil
				}
			case opERROR:
				return peerError(pkt)
			}
		}
	}
}

// errTotalPut ends an upload that would take the server past MaxTotalPut.
var errTotalPut = errors.New("uploads exceed the server's limit")

// putWriter writes an upload, counting it against the server's limit.
type putWriter struct {
	s       *Server
	w       io.Writer
	counted int64
}

func (p *putWriter) Write(b []byte) (int, error) {
	if p.s.MaxTotalPut > 0 {
		p.counted += int64(len(b))
		if p.s.totalPut.Add(int64(len(b))) > p.s.MaxTotalPut {
			return 0, errTotalPut
		}
	}
	return p.w.Write(b)
}

func (v *serving) write(ctx context.Context, l *link, req *RequestPacket, resolved *string) (int64, *receiver, error) {
	s := v.s
	if e := checkMode(req); e != nil {
		return 0, nil, refuse(l, e)
	}
	n, e := s.negotiate(req)
	if e != nil {
		return 0, nil, refuse(l, e)
	}
	name, e := s.resolve(OpWrite, req.Filename)
	if e != nil {
		return 0, nil, refuse(l, e)
	}
	*resolved = name
	tooBig := func(size int64) *Error {
		return &Error{Code: ErrDiskFull, Message: fmt.Sprintf("upload exceeds the server's limit of %d bytes a file", size)}
	}
	limit := s.MaxPutSize
	if s.PutLimit != nil {
		l2, err := s.PutLimit(name)
		if err != nil {
			msg := err.Error()
			if len(msg) > 256 {
				msg = msg[:256] + "..."
			}
			return 0, nil, refuse(l, &Error{Code: ErrAccess, Message: msg})
		}
		if l2 > 0 && (limit <= 0 || l2 < limit) {
			limit = l2
		}
	}
	if limit > 0 && n.tsize > limit {
		return 0, nil, refuse(l, tooBig(limit))
	}
	if s.MaxTotalPut > 0 && n.tsize > 0 && s.totalPut.Load()+n.tsize > s.MaxTotalPut {
		return 0, nil, refuse(l, &Error{Code: ErrDiskFull, Message: fmt.Sprintf("upload of %d bytes exceeds what the server still accepts", n.tsize)})
	}
	// The upload goes to a temporary file beside its target, renamed into
	// place only once complete. The rename would replace a symlink, not
	// write through it; refuse it all the same.
	if fi, err := v.root.Lstat(name); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		return 0, nil, refuse(l, &Error{Code: ErrAccess, Message: fmt.Sprintf("%q is a symbolic link on the server; it is not replaced", truncate(req.Filename))})
	}
	dir, base := path.Split(name)
	tmp := fmt.Sprintf("%s.%s.tftp-%d-%d", dir, base, os.Getpid(), s.tmpSeq.Add(1))
	f, err := v.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		e := openError(req.Filename, err)
		return 0, nil, fmt.Errorf("%w (%w)", refuse(l, e), err)
	}
	pw := &putWriter{s: s, w: f}
	bw := bufio.NewWriterSize(pw, 256<<10)
	ok, cleaned := false, false
	cleanup := func() {
		if !cleaned {
			cleaned = true
			f.Close()
			v.root.Remove(tmp)
			s.totalPut.Add(-pw.counted)
		}
	}
	defer func() {
		if !ok {
			cleanup()
		}
	}()
	r := newReceiver(l, n.p, bw)
	if limit > 0 {
		r.limit = limit
		r.over = tooBig
	}
	first := appendAck(nil, 0)
	if len(n.oack) > 0 {
		first = appendOACK(nil, n.oack)
	}
	got, err := r.run(ctx, first)
	if err == nil {
		if err = bw.Flush(); err != nil {
			err = writeAbort(err)
		}
	}
	if err == nil {
		if err = f.Close(); err != nil {
			err = writeAbort(err)
		}
	}
	if err == nil {
		if err = v.root.Rename(tmp, name); err != nil {
			err = &abort{tell: openError(req.Filename, err), err: err}
		}
	}
	if err != nil {
		cleanup() // before the client hears of the failure
		tellPeer(l, err)
		return got, nil, err
	}
	ok = true
	if err := r.finish(); err != nil {
		return got, nil, err
	}
	return got, r, nil
}
