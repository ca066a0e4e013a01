package worker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/buildfarm/buildfarm/internal/buildinfo"
)

// The guest channel: virtio-serial ports between the agent's management
// console (package console) and the guest. The worker serves ConsolePort;
// guest programs write lines to NotifyPort, which the console streams.
// The guest's init links each port as /dev/virtio-ports/NAME, as udev does.
const (
	ConsolePort = "org.buildfarm.console"
	NotifyPort  = "org.buildfarm.notify"
)

// ChannelRequest is what the console asks on ConsolePort, one JSON object
// a line. Op is one of:
//
//	proc FILE  the contents of /proc/FILE (kmsg: the kernel log, read
//	           without consuming it, from /dev/kmsg)
//	log TEXT   write TEXT into the kernel log (/dev/kmsg)
//	sync       sync(2)
//	freeze     sync, then freeze every file system on a block device
//	           (FIFREEZE), until thaw or for at most FreezeLimit
//	thaw       thaw what freeze froze
//	start M    the worker's start, the StartFile manifest M, for a worker
//	           that awaits it here (Config.StartChannel); answered once
//	           the worker has applied it
type ChannelRequest struct {
	ID  uint64 `json:"id"`
	Op  string `json:"op"`
	Arg string `json:"arg,omitempty"`
}

// ChannelMessage is what the worker writes on ConsolePort, one JSON object
// a line: a reply to the request with the same ID (OK with Data, or
// Error), or, with ID 0, an event (Event names it: boot, progress) with
// Text.
type ChannelMessage struct {
	ID    uint64 `json:"id,omitempty"`
	OK    bool   `json:"ok,omitempty"`
	Data  string `json:"data,omitempty"`
	Error string `json:"error,omitempty"`
	Event string `json:"event,omitempty"`
	Text  string `json:"text,omitempty"`
}

// FreezeLimit is how long a freeze lasts without a thaw: a console that
// dies during a backup must not leave the guest's disks frozen.
const FreezeLimit = time.Minute

// maxProc bounds a proc reply.
const maxProc = 1 << 20

// FindPort returns the device node of the virtio-serial port named name,
// looked up in sys (/sys/class/virtio-ports) and dev (/dev).
func FindPort(sys, dev, name string) (string, error) {
	ents, err := os.ReadDir(sys)
	if err != nil {
		return "", fmt.Errorf("virtio-serial port %s: %w (is the virtio_console module loaded?)", name, err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(sys, e.Name(), "name"))
		if err == nil && strings.TrimSpace(string(b)) == name {
			return filepath.Join(dev, e.Name()), nil
		}
	}
	return "", fmt.Errorf("virtio-serial port %s: not in %s", name, sys)
}

// Channel is the worker's end of ConsolePort. Notify never blocks; a nil
// *Channel ignores notifications.
type Channel struct {
	f      *os.File
	log    *slog.Logger
	events chan []byte
	reply  chan []byte

	starts chan startRequest // to awaitChannelStart

	mu     sync.Mutex
	frozen []string
	thawAt *time.Timer
}

// OpenChannel opens ConsolePort. The caller runs Serve.
func OpenChannel(log *slog.Logger) (*Channel, error) {
	dev, err := FindPort("/sys/class/virtio-ports", "/dev", ConsolePort)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("virtio-serial port %s: %w", ConsolePort, err)
	}
	return &Channel{f: f, log: log, events: make(chan []byte, 256), reply: make(chan []byte, 4), starts: make(chan startRequest)}, nil
}

// attachChannel opens the guest channel when the worker has none yet
// (Config.Channel), at its start and again after the guest's set-up,
// which may load the console's driver in the background (awaitReady). It
// serves the channel until ctx ends, makes it the worker's notifier too,
// unless it has one, and tells the console the worker started.
func (w *Worker) attachChannel(ctx context.Context) (*Channel, error) {
	if w.cfg.Channel != nil {
		return w.cfg.Channel, nil
	}
	ch, err := OpenChannel(w.log)
	if err != nil {
		return nil, err
	}
	go ch.Serve(ctx)
	w.cfg.Channel = ch
	if w.cfg.Notify == nil {
		w.cfg.Notify = ch
	}
	ch.Notify("boot", fmt.Sprintf("buildfarm-worker %s: started (%s)", buildinfo.String(), w.cfg.Mode))
	return ch, nil
}

// Notify queues an event for the console. When the queue is full (nobody
// reads the host's end) the event is dropped.
func (c *Channel) Notify(event, text string) {
	if c == nil {
		return
	}
	b, _ := json.Marshal(ChannelMessage{Event: event, Text: text})
	select {
	case c.events <- append(b, '\n'):
	default:
	}
}

// Serve answers the console's requests until ctx ends. A port whose host
// end is not connected reads as end of file: Serve waits and reads again.
func (c *Channel) Serve(ctx context.Context) {
	go c.write(ctx)
	go func() { <-ctx.Done(); c.f.Close() }()
	r := bufio.NewReaderSize(c.f, 64<<10)
	for ctx.Err() == nil {
		line, err := r.ReadBytes('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				select {
				case <-time.After(200 * time.Millisecond):
				case <-ctx.Done():
				}
				continue
			}
			if ctx.Err() == nil {
				c.log.Warn("guest channel", "err", err)
			}
			return
		}
		var req ChannelRequest
		if err := json.Unmarshal(line, &req); err != nil || req.ID == 0 {
			continue // a partial line from an earlier host connection
		}
		m := ChannelMessage{ID: req.ID}
		if data, err := c.do(req); err != nil {
			m.Error = err.Error()
		} else {
			m.OK, m.Data = true, data
		}
		b, _ := json.Marshal(m)
		select {
		case c.reply <- append(b, '\n'):
		case <-ctx.Done():
		}
	}
}

// write sends replies and events, replies first.
func (c *Channel) write(ctx context.Context) {
	for {
		var b []byte
		select {
		case b = <-c.reply:
		default:
			select {
			case b = <-c.reply:
			case b = <-c.events:
			case <-ctx.Done():
				return
			}
		}
		if _, err := c.f.Write(b); err != nil {
			if ctx.Err() == nil {
				c.log.Warn("guest channel", "err", err)
			}
			return
		}
	}
}

// do runs one request.
func (c *Channel) do(req ChannelRequest) (string, error) {
	switch req.Op {
	case "proc":
		return readProc(req.Arg)
	case "log":
		f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0)
		if err != nil {
			return "", err
		}
		defer f.Close()
		// A record without its newline stays open for a continuation,
		// unseen by readers of the log.
		_, err = f.WriteString(strings.TrimRight(req.Arg, "\n") + "\n")
		return "", err
	case "sync":
		syscall.Sync()
		return "", nil
	case "freeze":
		return c.freeze()
	case "thaw":
		return c.thaw(), nil
	case "start":
		return "", c.start(req.Arg)
	}
	return "", fmt.Errorf("unknown request %q", req.Op)
}

// readProc reads /proc/NAME; the path may not leave /proc, symbolic links
// included (/proc/self/root would).
func readProc(name string) (string, error) {
	if name == "kmsg" {
		return readKmsg()
	}
	if name == "" || strings.HasPrefix(name, "/") && !strings.HasPrefix(name, "/proc/") {
		return "", fmt.Errorf("proc %q: want a file under /proc", name)
	}
	p := filepath.Join("/proc", strings.TrimPrefix(name, "/proc/"))
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", fmt.Errorf("proc %s: %w", name, err)
	}
	if !strings.HasPrefix(real, "/proc/") {
		return "", fmt.Errorf("proc %s: resolves to %s, outside /proc", name, real)
	}
	f, err := os.Open(real)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxProc))
	return string(b), err
}

// readKmsg returns the kernel log as dmesg prints it without options,
// "[SECONDS] MESSAGE" a line, read from /dev/kmsg (which, unlike
// /proc/kmsg, does not consume it).
func readKmsg() (string, error) {
	fd, err := syscall.Open("/dev/kmsg", syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return "", fmt.Errorf("/dev/kmsg: %w", err)
	}
	defer syscall.Close(fd)
	var out strings.Builder
	buf := make([]byte, 8192)
	for out.Len() < maxProc {
		n, err := syscall.Read(fd, buf)
		if err == syscall.EPIPE {
			continue // overwritten records: go on with the next
		}
		if err != nil || n <= 0 {
			break // EAGAIN: the end of the log
		}
		rec := string(buf[:n])
		hdr, msg, ok := strings.Cut(rec, ";")
		if !ok {
			continue
		}
		msg, _, _ = strings.Cut(msg, "\n") // continuation lines are key=value
		var usec int64
		if f := strings.Split(hdr, ","); len(f) >= 3 {
			fmt.Sscan(f[2], &usec)
		}
		fmt.Fprintf(&out, "[%5d.%06d] %s\n", usec/1e6, usec%1e6, msg)
	}
	return out.String(), nil
}

// The file system freeze ioctls, _IOWR('X', 119/120, int).
const (
	fiFreeze = 0xc0045877
	fiThaw   = 0xc0045878
)

// freeze syncs and freezes the file systems on block devices (/dev/*
// sources in /proc/mounts), and schedules their thaw after FreezeLimit.
func (c *Channel) freeze() (string, error) {
	syscall.Sync()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.frozen) > 0 {
		return "", errors.New("already frozen")
	}
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return "", err
	}
	seen := map[string]bool{}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) < 2 || !strings.HasPrefix(f[0], "/dev/") || seen[f[0]] {
			continue
		}
		seen[f[0]] = true
		mnt := strings.ReplaceAll(f[1], `\040`, " ")
		if err := ioctlPath(mnt, fiFreeze); err != nil {
			c.thawLocked()
			return "", fmt.Errorf("freeze %s: %w", mnt, err)
		}
		c.frozen = append(c.frozen, mnt)
	}
	c.thawAt = time.AfterFunc(FreezeLimit, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.thawLocked()
	})
	return strings.Join(c.frozen, " "), nil
}

func (c *Channel) thaw() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.thawLocked()
}

func (c *Channel) thawLocked() string {
	if c.thawAt != nil {
		c.thawAt.Stop()
		c.thawAt = nil
	}
	var done []string
	for i := len(c.frozen) - 1; i >= 0; i-- {
		if err := ioctlPath(c.frozen[i], fiThaw); err != nil {
			c.log.Warn("thaw", "mount", c.frozen[i], "err", err)
			continue
		}
		done = append(done, c.frozen[i])
	}
	c.frozen = nil
	return strings.Join(done, " ")
}

func ioctlPath(path string, req uintptr) error {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	var arg int32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&arg))); e != 0 {
		return e
	}
	return nil
}

// Notifier takes the worker's events for the management console.
type Notifier interface{ Notify(event, text string) }

// notify sends an event to the console, when the worker has a channel.
func (c Config) notify(event, text string) {
	if c.Notify != nil {
		c.Notify.Notify(event, text)
	}
}
