package tftp

import (
	"encoding/binary"
	"errors"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// spinFor is how long a read polls before it blocks: about a loopback
// round trip with a lock-step peer, so that the answer is taken while
// the CPU is still awake rather than after the thread sleeps and is woken
// (in a VM, a halted vCPU costs a hypervisor exit to wake).
const spinFor = 50 * time.Microsecond

// spin says whether reads poll at all: on a single CPU, polling would
// only keep the peer or the kernel's network processing from running.
var spin = runtime.NumCPU() > 1

// holding counts the reads waiting in the kernel with their P; at most
// maxHolding do, so that one P is always left for the rest of the process.
var (
	holding    atomic.Int32
	maxHolding = int32(runtime.GOMAXPROCS(0) - 1)
)

// Linux UDP segmentation offload: a window of equal-sized DATA packets goes
// out in one sendmsg (UDP_SEGMENT, GSO), and a receiver that asked for
// UDP_GRO gets consecutive packets of one sender in one recvmsg. On
// loopback or inside a VM's namespace this moves a window with one system
// call a side instead of one a packet. Either end works without the other,
// and both fall back to a packet at a time where the kernel refuses.
const (
	solUDP     = 17  // SOL_UDP
	udpSegment = 103 // UDP_SEGMENT
	udpGRO     = 104 // UDP_GRO

	// gsoMaxSegments and gsoMaxBytes bound one GSO send (the kernel's
	// UDP_MAX_SEGMENTS and the largest IP datagram).
	gsoMaxSegments = 64
	gsoMaxBytes    = 65000
)

// enableOffload turns on GRO for l's descriptor and notes whether GSO may
// be tried.
func (l *link) enableOffload() {
	l.gso = true
	if syscall.SetsockoptInt(l.fd, solUDP, udpGRO, 1) == nil {
		l.gro = true
		l.grobuf = make([]byte, 1<<16)
		l.oob = make([]byte, syscall.CmsgSpace(4))
	}
}

// sendRun sends b, consecutive packets of seg bytes each but the last
// (which may be shorter), to the peer.
func (l *link) sendRun(b []byte, seg int) error {
	per := min(gsoMaxSegments, gsoMaxBytes/seg)
	for len(b) > 0 {
		if !l.gso || !l.connected || per < 2 || len(b) <= seg {
			end := min(seg, len(b))
			if err := l.send(b[:end]); err != nil {
				return err
			}
			b = b[end:]
			continue
		}
		end := min(per*seg, len(b))
		err := l.sendGSO(b[:end], seg)
		if err != nil {
			if errors.Is(err, syscall.EIO) || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOPROTOOPT) || errors.Is(err, syscall.EOPNOTSUPP) {
				l.gso = false // a packet at a time from now on
				continue
			}
			if isTransient(err) {
				err = nil
			} else {
				return err
			}
		}
		b = b[end:]
	}
	return nil
}

func (l *link) sendGSO(b []byte, seg int) error {
	if l.gsoOOB == nil {
		l.gsoOOB = make([]byte, syscall.CmsgSpace(2))
		h := (*syscall.Cmsghdr)(unsafe.Pointer(&l.gsoOOB[0]))
		h.Level = solUDP
		h.Type = udpSegment
		h.SetLen(syscall.CmsgLen(2))
	}
	binary.NativeEndian.PutUint16(l.gsoOOB[syscall.CmsgLen(0):], uint16(seg))
	return ignoreInterrupt(func() error {
		_, err := syscall.SendmsgN(l.fd, b, l.gsoOOB, nil, 0)
		return err
	})
}

// recvGRO reads from the connected descriptor into l.grobuf with
// recvmsg, without allocating, and returns the length read and the
// segment size of a coalesced read (0 if not coalesced).
func (l *link) recvGRO() (n, seg int, err error) {
	iov := syscall.Iovec{Base: &l.grobuf[0]}
	iov.SetLen(len(l.grobuf))
	msg := syscall.Msghdr{Iov: &iov, Iovlen: 1, Control: &l.oob[0]}
	// First without waiting, and without telling Go's scheduler about a
	// system call that cannot block, polling for up to spinFor: a
	// lock-step peer's answer is often there already or within a round
	// trip, and entering a blocking call wakes scheduler threads and lets
	// the CPU sleep (measured on loopback, busybox's client at blksize
	// 1468: 1.95 s without the polling, 1.54 s with it).
	try := func() (n, seg int, err error) {
		msg.SetControllen(len(l.oob))
		r, _, e := syscall.RawSyscall(syscall.SYS_RECVMSG, uintptr(l.fd), uintptr(unsafe.Pointer(&msg)), syscall.MSG_DONTWAIT)
		if e != 0 {
			return 0, 0, e
		}
		return int(r), groSegment(l.oob[:msg.Controllen]), nil
	}
	n, seg, err = try()
	if err != syscall.EAGAIN {
		return n, seg, err
	}
	start := time.Now()
	if spin && !l.slowPeer {
		for time.Since(start) < spinFor {
			if n, seg, err = try(); err != syscall.EAGAIN {
				return n, seg, err
			}
		}
	}
	msg.SetControllen(len(l.oob))
	// Wait in the kernel without handing the P over when the client is
	// Dedicated, or while other Ps stay free for the rest of the process
	// (see Options.Dedicated): the hand-off wakes another thread to poll
	// the network, a packet. The socket's receive timeout bounds the
	// wait, and the runtime's preemption signal interrupts it (EINTR)
	// when other goroutines must run.
	block := syscall.Syscall
	if l.holdP {
		block = syscall.RawSyscall
	} else if holding.Add(1) <= maxHolding {
		defer holding.Add(-1)
		block = syscall.RawSyscall
	} else {
		holding.Add(-1)
	}
	r, _, e := block(syscall.SYS_RECVMSG, uintptr(l.fd), uintptr(unsafe.Pointer(&msg)), 0)
	// Poll next time only if this answer came within the polling time:
	// a slow peer (big blocks, a guest under TCG) would have the polling
	// take the CPU from it, or from the QEMU running it, for nothing.
	l.slowPeer = time.Since(start) > spinFor
	if e != 0 {
		return 0, 0, e
	}
	return int(r), groSegment(l.oob[:msg.Controllen]), nil
}

// groSegment returns the segment size that a UDP_GRO control message in
// oob gives, or 0.
func groSegment(oob []byte) int {
	for len(oob) >= syscall.SizeofCmsghdr {
		h := (*syscall.Cmsghdr)(unsafe.Pointer(&oob[0]))
		if h.Len < syscall.SizeofCmsghdr || int(h.Len) > len(oob) {
			return 0
		}
		data := oob[syscall.CmsgLen(0):h.Len]
		if h.Level == solUDP && h.Type == udpGRO && len(data) >= 4 {
			return int(binary.NativeEndian.Uint32(data))
		}
		oob = oob[min(len(oob), syscall.CmsgSpace(int(h.Len)-syscall.CmsgLen(0))):]
	}
	return 0
}

// write sends b to the connected peer: without waiting first, as in
// recvGRO, then, should the socket's buffer be full, waiting.
func (l *link) write(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	_, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, uintptr(l.fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), syscall.MSG_DONTWAIT, 0, 0)
	switch e {
	case 0:
		return nil
	case syscall.EAGAIN:
		_, err := syscall.Write(l.fd, b)
		return err
	}
	return e
}

// rawWriter writes to a file without handing the P over either, for a
// Dedicated client: a block's write into the page cache is short, but
// long enough under TCG for the runtime to hand the P to another thread.
type rawWriter struct{ f *os.File }

func (w rawWriter) Write(b []byte) (int, error) {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return w.f.Write(b)
	}
	n := 0
	var werr error
	err = rc.Write(func(fd uintptr) bool {
		for n < len(b) {
			r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&b[n])), uintptr(len(b)-n))
			switch {
			case e == syscall.EINTR:
				continue
			case e == syscall.EAGAIN:
				return false // not a regular file: wait for it
			case e != 0:
				werr = &os.PathError{Op: "write", Path: w.f.Name(), Err: e}
				return true
			}
			n += int(r)
		}
		return true
	})
	if werr != nil {
		return n, werr
	}
	return n, err
}
