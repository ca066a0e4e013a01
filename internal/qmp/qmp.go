// Package qmp is a client of the QEMU Machine Protocol, written against
// QEMU's QMP specification (docs/interop/qmp-spec): it reads the greeting,
// negotiates capabilities, runs commands with ids (several may be in flight)
// and delivers asynchronous events (SHUTDOWN, POWERDOWN, STOP, RESUME,
// RESET, ...) to subscribers without losing any. Every call that waits takes
// a context. It needs no external tool; package qemu starts the QEMU it
// talks to.
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// ErrClosed means the connection to QEMU is closed (QEMU exited, or Close
// was called).
var ErrClosed = errors.New("qmp: connection closed")

// Error is an error response of QEMU to a command.
type Error struct {
	Command string
	Class   string // for example GenericError, CommandNotFound
	Desc    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Event is an asynchronous message from QEMU.
type Event struct {
	Name string          // for example SHUTDOWN
	Data json.RawMessage // the event's data member, may be nil
	Time time.Time       // QEMU's timestamp
}

// Version is QEMU's version from the greeting.
type Version struct {
	Major, Minor, Micro int
	Package             string
}

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro) }

// message is any message QEMU sends: greeting, response or event.
type message struct {
	QMP *struct {
		Version struct {
			QEMU struct {
				Major int `json:"major"`
				Minor int `json:"minor"`
				Micro int `json:"micro"`
			} `json:"qemu"`
			Package string `json:"package"`
		} `json:"version"`
		Capabilities []string `json:"capabilities"`
	} `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	ID        json.RawMessage `json:"id"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

type reply struct {
	ret json.RawMessage
	err *Error
}

func (r reply) result(command string) (json.RawMessage, error) {
	if r.err != nil {
		r.err.Command = command
		return nil, r.err
	}
	return r.ret, nil
}

// Client is a QMP connection in command mode. Its methods are safe for
// concurrent use.
type Client struct {
	conn    net.Conn
	version Version

	wmu sync.Mutex // serializes writes

	mu      sync.Mutex
	nextID  uint64
	pending map[string]chan reply
	subs    map[*Subscription]struct{}
	err     error // why the connection ended, set once before done closes
	done    chan struct{}
}

// Dial connects to the QMP unix socket at path, reads the greeting and
// leaves capabilities negotiation mode.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s: %w", path, err)
	}
	c, err := NewClient(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", path, err)
	}
	return c, nil
}

// NewClient speaks QMP over conn, which it owns from now on: it reads the
// greeting and runs qmp_capabilities.
func NewClient(ctx context.Context, conn net.Conn) (*Client, error) {
	c := &Client{
		conn:    conn,
		pending: make(map[string]chan reply),
		subs:    make(map[*Subscription]struct{}),
		done:    make(chan struct{}),
	}
	// The greeting is the first line; read it under ctx's deadline.
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	r := bufio.NewReaderSize(conn, 64<<10)
	line, err := r.ReadBytes('\n')
	if !stop() {
		conn.Close()
		return nil, fmt.Errorf("greeting: %w", ctx.Err())
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	var m message
	if err := json.Unmarshal(line, &m); err != nil || m.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("greeting: not a QMP greeting: %q", line)
	}
	v := m.QMP.Version
	c.version = Version{Major: v.QEMU.Major, Minor: v.QEMU.Minor, Micro: v.QEMU.Micro, Package: v.Package}
	go c.read(r)
	if _, err := c.Execute(ctx, "qmp_capabilities", nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Version returns QEMU's version, from the greeting.
func (c *Client) Version() Version { return c.version }

// Done is closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.done }

// Close closes the connection. Commands in flight fail with ErrClosed.
func (c *Client) Close() error {
	err := c.conn.Close()
	<-c.done
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// read dispatches QEMU's messages until the connection ends.
func (c *Client) read(r *bufio.Reader) {
	var err error
	for {
		var line []byte
		line, err = r.ReadBytes('\n')
		if err != nil {
			break
		}
		var m message
		if jerr := json.Unmarshal(line, &m); jerr != nil {
			err = fmt.Errorf("bad message %q: %w", line, jerr)
			break
		}
		switch {
		case m.Event != "":
			ev := Event{Name: m.Event, Data: m.Data,
				Time: time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)}
			c.mu.Lock()
			for s := range c.subs {
				s.deliver(ev)
			}
			c.mu.Unlock()
		case m.ID != nil:
			var id string
			if json.Unmarshal(m.ID, &id) != nil {
				continue // not one of ours
			}
			c.mu.Lock()
			ch := c.pending[id]
			delete(c.pending, id)
			c.mu.Unlock()
			if ch == nil {
				continue
			}
			rep := reply{ret: m.Return}
			if m.Error != nil {
				rep.err = &Error{Class: m.Error.Class, Desc: m.Error.Desc}
			}
			ch <- rep
		}
	}
	c.conn.Close()
	c.mu.Lock()
	c.err = ErrClosed
	if err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
		c.err = fmt.Errorf("%w: %w", ErrClosed, err)
	}
	c.pending = nil
	for s := range c.subs {
		s.end()
	}
	c.mu.Unlock()
	close(c.done)
}

// Execute runs command with args (nil, or a value that marshals to a JSON
// object) and returns QEMU's return value. An error response is an *Error.
// When ctx ends first, Execute returns ctx's error; the command may still
// run in QEMU.
func (c *Client) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	ch := make(chan reply, 1)
	c.mu.Lock()
	if c.pending == nil {
		err := c.err
		c.mu.Unlock()
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	c.nextID++
	id := strconv.FormatUint(c.nextID, 10)
	c.pending[id] = ch
	c.mu.Unlock()

	forget := func() {
		c.mu.Lock()
		if c.pending != nil {
			delete(c.pending, id)
		}
		c.mu.Unlock()
	}
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        string `json:"id"`
	}{command, args, id}
	b, err := json.Marshal(req)
	if err != nil {
		forget()
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	b = append(b, '\n')
	c.wmu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		c.conn.SetWriteDeadline(dl)
	}
	_, err = c.conn.Write(b)
	c.conn.SetWriteDeadline(time.Time{})
	c.wmu.Unlock()
	if err != nil {
		forget()
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	select {
	case rep := <-ch:
		return rep.result(command)
	case <-c.done:
		// The reply may have raced the end of the connection.
		select {
		case rep := <-ch:
			return rep.result(command)
		default:
		}
		return nil, fmt.Errorf("qmp %s: %w", command, c.err)
	case <-ctx.Done():
		forget()
		return nil, fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
}

// Run is Execute that decodes the return value into result (which may be
// nil to ignore it).
func (c *Client) Run(ctx context.Context, command string, args, result any) error {
	ret, err := c.Execute(ctx, command, args)
	if err != nil || result == nil {
		return err
	}
	if err := json.Unmarshal(ret, result); err != nil {
		return fmt.Errorf("qmp %s: decode %s: %w", command, ret, err)
	}
	return nil
}

// Status is the answer to query-status.
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"` // for example running, paused, prelaunch, shutdown
}

// QueryStatus runs query-status.
func (c *Client) QueryStatus(ctx context.Context) (Status, error) {
	var s Status
	err := c.Run(ctx, "query-status", nil, &s)
	return s, err
}

// Subscription receives the events named when it was made (all events if
// none were named), in order, from the moment Subscribe returned. Events
// are queued without bound, so a slow reader loses none.
type Subscription struct {
	c      *Client
	names  map[string]bool
	mu     sync.Mutex
	queue  []Event
	ended  bool
	notify chan struct{}
}

// Subscribe starts delivering the events named (all if none) to a new
// subscription. Close it when done.
func (c *Client) Subscribe(names ...string) *Subscription {
	s := &Subscription{c: c, notify: make(chan struct{}, 1)}
	if len(names) > 0 {
		s.names = make(map[string]bool)
		for _, n := range names {
			s.names[n] = true
		}
	}
	c.mu.Lock()
	if c.pending == nil {
		s.ended = true
	} else {
		c.subs[s] = struct{}{}
	}
	c.mu.Unlock()
	return s
}

func (s *Subscription) deliver(ev Event) {
	if s.names != nil && !s.names[ev.Name] {
		return
	}
	s.mu.Lock()
	s.queue = append(s.queue, ev)
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

func (s *Subscription) end() {
	s.mu.Lock()
	s.ended = true
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// Next returns the next event. Once the connection has ended and the
// queue is empty it returns ErrClosed.
func (s *Subscription) Next(ctx context.Context) (Event, error) {
	for {
		s.mu.Lock()
		if len(s.queue) > 0 {
			ev := s.queue[0]
			s.queue = s.queue[1:]
			s.mu.Unlock()
			return ev, nil
		}
		ended := s.ended
		s.mu.Unlock()
		if ended {
			return Event{}, ErrClosed
		}
		select {
		case <-s.notify:
		case <-ctx.Done():
			return Event{}, ctx.Err()
		}
	}
}

// Close stops deliveries to s.
func (s *Subscription) Close() {
	s.c.mu.Lock()
	delete(s.c.subs, s)
	s.c.mu.Unlock()
	s.end()
}
