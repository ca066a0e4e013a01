package tftp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"
)

// params are the negotiated parameters of one transfer.
type params struct {
	blksize int
	window  int
	timeout time.Duration
	retries int
}

// Defaults for both ends.
const (
	DefaultTimeout = time.Second
	DefaultRetries = 5
	// maxWindowBytes bounds the memory a sender keeps for retransmission.
	maxWindowBytes = 4 << 20
)

// clampWindow limits a window so that it fits maxWindowBytes.
func clampWindow(window, blksize int) int {
	if m := maxWindowBytes / (blksize + 4); window > m {
		window = m
	}
	return max(window, 1)
}

// sender sends src as DATA blocks, window by window (RFC 7440; a window of
// 1 is RFC 1350's lock-step), and waits for each window's ACK. The blocks
// of the current window stay in a ring for retransmission, and the next
// window is read into the ring while the peer takes in the current one
// (tftpd-hpa's read-ahead), so a lock-step transfer does not wait for the
// file between a block's ACK and the next block.
type sender struct {
	l    *link
	p    params
	src  io.Reader
	ring []byte // two windows of slots of 4+blksize bytes
	lens []int  // packet length of each slot
	recv []byte

	filled int64 // highest block read into the ring
	last   int64 // the final (short) block, once read; 0 before
}

func newSender(l *link, p params, src io.Reader) *sender {
	return &sender{
		l: l, p: p, src: src,
		ring: make([]byte, 2*p.window*(4+p.blksize)),
		lens: make([]int, 2*p.window),
		recv: make([]byte, 4+MaxBlockSize),
	}
}

func (s *sender) slot(block int64) []byte {
	i := int(block % int64(len(s.lens)))
	size := 4 + s.p.blksize
	return s.ring[i*size : (i+1)*size]
}

// fill reads the next block into its slot.
func (s *sender) fill() error {
	b := s.filled + 1
	pkt := s.slot(b)
	binary.BigEndian.PutUint16(pkt, opDATA)
	binary.BigEndian.PutUint16(pkt[2:], uint16(b))
	n, err := io.ReadFull(s.src, pkt[4:])
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		return err
	}
	s.lens[b%int64(len(s.lens))] = 4 + n
	s.filled = b
	if n < s.p.blksize {
		s.last = b
	}
	return nil
}

// run sends everything and returns the number of payload bytes sent.
// A failure of src is an *abort.
func (s *sender) run(ctx context.Context) (sent int64, err error) {
	base := int64(1) // the first block not acknowledged
	tries := 0
	for {
		// Send the window from base.
		top := base + int64(s.p.window) - 1
		if s.last != 0 && top > s.last {
			top = s.last
		}
		for s.filled < top && s.last == 0 {
			if err := s.fill(); err != nil {
				return sent, &abort{tell: &Error{Code: ErrUndefined, Message: "cannot read the file"}, err: err}
			}
		}
		if s.last != 0 && top > s.last {
			top = s.last
		}
		// The window is one or two runs of consecutive slots of the ring.
		size := int64(4 + s.p.blksize)
		n := int64(len(s.lens))
		for b := base; b <= top; {
			end := min(top, b+n-1-b%n) // the last block before the ring wraps
			run := s.ring[b%n*size : end%n*size+int64(s.lens[end%n])]
			if err := s.l.sendRun(run, int(size)); err != nil {
				return sent, err
			}
			b = end + 1
		}
		// Read ahead the next window while the peer takes this one.
		for s.last == 0 && s.filled < top+int64(s.p.window) {
			if err := s.fill(); err != nil {
				return sent, &abort{tell: &Error{Code: ErrUndefined, Message: "cannot read the file"}, err: err}
			}
		}
		// Wait for an ACK that acknowledges blocks of the window.
		deadline := time.Now().Add(s.p.timeout)
		for {
			pkt, err := s.l.recv(ctx, s.recv, deadline)
			if err == errTimeout {
				tries++
				if tries > s.p.retries {
					return sent, fmt.Errorf("no ACK from %v for block %d after %d tries of %v", s.l.peer, uint16(base), tries, s.p.timeout)
				}
				break
			}
			if err != nil {
				return sent, err
			}
			if len(pkt) < 4 {
				continue
			}
			switch binary.BigEndian.Uint16(pkt) {
			case opACK:
				// How many blocks does it acknowledge? A duplicate ACK of
				// base-1 acknowledges none and is ignored: answering it
				// would be the sorcerer's apprentice bug.
				d := int64(uint16(binary.BigEndian.Uint16(pkt[2:]) - uint16(base-1)))
				if d == 0 || d > top-base+1 {
					continue
				}
				for b := base; b < base+d; b++ {
					sent += int64(s.lens[b%n] - 4)
				}
				base += d
				tries = 0
				if s.last != 0 && base > s.last {
					return sent, nil
				}
			case opERROR:
				return sent, peerError(pkt)
			default:
				continue
			}
			break
		}
	}
}

func peerError(pkt []byte) error {
	p, err := Decode(pkt)
	if err != nil {
		return err
	}
	if e, ok := p.(*Error); ok {
		return e
	}
	return fmt.Errorf("unexpected %T", p)
}

// receiver receives DATA blocks into dst and acknowledges them, one ACK a
// window (RFC 7440); a gap or a duplicate makes it acknowledge the last
// block it got in order, once, so the sender goes on from there.
type receiver struct {
	l     *link
	p     params
	dst   io.Writer
	limit int64 // most bytes accepted; 0 for no limit
	// over is the error for a transfer beyond limit.
	over func(int64) *Error
	recv []byte
	ack  []byte // the last ACK (or OACK) sent, resent on timeout
}

func newReceiver(l *link, p params, dst io.Writer) *receiver {
	return &receiver{l: l, p: p, dst: dst, recv: make([]byte, 4+p.blksize+1), ack: make([]byte, 0, 4)}
}

// run receives until the final block. first is what to send before the
// first DATA arrives (OACK or ACK 0), resent on timeout; or a DATA packet
// already received, for a client whose server ignored the options.
func (r *receiver) run(ctx context.Context, first []byte) (got int64, err error) {
	expect := int64(1) // the next block
	tries := 0
	inWindow := 0
	nacked := false
	var pending []byte
	if len(first) >= 2 && binary.BigEndian.Uint16(first) == opDATA {
		pending = first
	} else {
		r.ack = append(r.ack[:0], first...)
		if err := r.l.send(r.ack); err != nil {
			return 0, err
		}
	}
	sendAck := func(block int64) error {
		r.ack = appendAck(r.ack[:0], uint16(block))
		inWindow = 0
		return r.l.send(r.ack)
	}
	deadline := time.Now().Add(r.p.timeout)
	for {
		pkt := pending
		pending = nil
		if pkt == nil {
			pkt, err = r.l.recv(ctx, r.recv, deadline)
			if err == errTimeout {
				tries++
				if tries > r.p.retries {
					return got, fmt.Errorf("no DATA from %v for block %d after %d tries of %v", r.l.peer, uint16(expect), tries, r.p.timeout)
				}
				// Say where we are: the last block in order (or resend
				// the OACK or ACK 0 before the first).
				if expect > 1 {
					err = sendAck(expect - 1)
				} else {
					err = r.l.send(r.ack)
				}
				if err != nil {
					return got, err
				}
				deadline = time.Now().Add(r.p.timeout)
				continue
			}
			if err != nil {
				return got, err
			}
		}
		if len(pkt) < 4 {
			continue
		}
		switch binary.BigEndian.Uint16(pkt) {
		case opDATA:
		case opERROR:
			return got, peerError(pkt)
		default:
			continue
		}
		block := binary.BigEndian.Uint16(pkt[2:])
		if block != uint16(expect) {
			// A duplicate or a block after a gap: say where we are, once
			// until the sender goes on.
			if !nacked {
				nacked = true
				if err := sendAck(expect - 1); err != nil {
					return got, err
				}
			}
			continue
		}
		payload := pkt[4:]
		if len(payload) > r.p.blksize {
			e := &Error{Code: ErrIllegal, Message: fmt.Sprintf("block %d has %d bytes, more than the block size %d", block, len(payload), r.p.blksize)}
			return got, &abort{tell: e, err: e}
		}
		if r.limit > 0 && got+int64(len(payload)) > r.limit {
			e := r.over(r.limit)
			return got, &abort{tell: e, err: e}
		}
		final := len(payload) < r.p.blksize
		expect++
		tries = 0
		nacked = false
		inWindow++
		// A window's ACK goes out before its last block is written, so
		// that the sender's next window overlaps the write. (Should the
		// write fail, the ERROR that follows ends the transfer all the
		// same.) The final ACK is sent by finish, once the data is safe.
		if !final && inWindow >= r.p.window {
			if err := sendAck(expect - 1); err != nil {
				return got, err
			}
		}
		if len(payload) > 0 {
			if _, err := r.dst.Write(payload); err != nil {
				return got, writeAbort(err)
			}
		}
		got += int64(len(payload))
		deadline = time.Now().Add(r.p.timeout)
		if final {
			r.ack = appendAck(r.ack[:0], block)
			return got, nil
		}
	}
}

// abort is a transfer that ends for a local reason; the peer is to be
// told with tell once the local side has cleaned up (a half upload
// removed before the client hears of its failure).
type abort struct {
	tell *Error
	err  error
}

func (a *abort) Error() string { return a.err.Error() }
func (a *abort) Unwrap() error { return a.err }

// tellPeer sends the peer the error of an abort, if err is one.
func tellPeer(l *link, err error) {
	var a *abort
	if errors.As(err, &a) {
		l.sendError(a.tell.Code, a.tell.Message)
	}
}

// writeAbort is the abort for a failure to write what was received.
func writeAbort(err error) *abort {
	tell := &Error{Code: ErrUndefined, Message: "cannot write the file"}
	switch {
	case errors.Is(err, errTotalPut):
		tell = &Error{Code: ErrDiskFull, Message: "uploads exceed the server's limit"}
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		tell = &Error{Code: ErrDiskFull, Message: "disk full"}
	}
	return &abort{tell: tell, err: err}
}

// finish sends the final ACK.
func (r *receiver) finish() error { return r.l.send(r.ack) }

// dally waits for retransmissions of the final DATA (its ACK was lost)
// and acknowledges them again (RFC 1350, "dallying"), until the sender
// has been silent for a while: the sender's timeout is not known here.
func (r *receiver) dally(ctx context.Context) {
	r.l.release() // a goroutine beside others: see release
	wait := max(3*r.p.timeout, time.Second)
	deadline := time.Now().Add(wait)
	for {
		pkt, err := r.l.recv(ctx, r.recv, deadline)
		if err != nil {
			return
		}
		if len(pkt) >= 4 && binary.BigEndian.Uint16(pkt) == opDATA {
			r.l.send(r.ack)
			deadline = time.Now().Add(wait)
		}
	}
}
