package console

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/buildfarm/buildfarm/internal/worker"
)

// ErrNoGuest means the guest channel did not answer: no worker serves it
// (not started yet, or gone), or the VM is stopped.
var ErrNoGuest = errors.New("the guest channel does not answer (is the VM stopped, or the worker not running?)")

// hub keeps the last notifications and hands new ones to subscribers.
type hub struct {
	mu   sync.Mutex
	ring []string
	max  int
	subs map[chan string]struct{}
}

func newHub(max int) *hub { return &hub{max: max, subs: make(map[chan string]struct{})} }

func (h *hub) add(event, text string) {
	line := time.Now().UTC().Format(time.RFC3339) + " " + event + " " + text
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.ring) == h.max {
		h.ring = h.ring[1:]
	}
	h.ring = append(h.ring, line)
	for ch := range h.subs {
		select {
		case ch <- line:
		default: // a reader that cannot keep up loses lines, not the VM
		}
	}
}

// subscribe returns the notifications kept so far and a channel of the
// next ones; cancel ends the subscription.
func (h *hub) subscribe() (backlog []string, next <-chan string, cancel func()) {
	ch := make(chan string, 256)
	h.mu.Lock()
	defer h.mu.Unlock()
	backlog = append([]string(nil), h.ring...)
	h.subs[ch] = struct{}{}
	return backlog, ch, func() {
		h.mu.Lock()
		delete(h.subs, ch)
		h.mu.Unlock()
	}
}

// port keeps a connection to one of QEMU's chardev sockets, dialling again
// when it drops, and hands each line read to line.
type port struct {
	path string
	line func([]byte)

	mu   sync.Mutex
	conn net.Conn
}

// run connects and reads until ctx ends.
func (p *port) run(ctx context.Context) {
	var d net.Dialer
	for ctx.Err() == nil {
		conn, err := d.DialContext(ctx, "unix", p.path)
		if err != nil {
			select {
			case <-time.After(200 * time.Millisecond):
				continue
			case <-ctx.Done():
				return
			}
		}
		p.mu.Lock()
		p.conn = conn
		p.mu.Unlock()
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		r := bufio.NewReaderSize(conn, 64<<10)
		for {
			b, err := r.ReadBytes('\n')
			if err != nil {
				break
			}
			p.line(b)
		}
		stop()
		conn.Close()
		p.mu.Lock()
		p.conn = nil
		p.mu.Unlock()
	}
}

func (p *port) write(b []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn == nil {
		return ErrNoGuest
	}
	p.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := p.conn.Write(b)
	return err
}

// guest multiplexes requests to the worker over worker.ConsolePort.
type guest struct {
	port    *port
	events  *hub
	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan worker.ChannelMessage
}

func newGuest(path string, events *hub) *guest {
	g := &guest{events: events, pending: make(map[uint64]chan worker.ChannelMessage)}
	g.port = &port{path: path, line: g.receive}
	return g
}

func (g *guest) receive(b []byte) {
	var m worker.ChannelMessage
	if json.Unmarshal(b, &m) != nil {
		return // a partial line from an earlier connection
	}
	if m.ID == 0 {
		if m.Event != "" {
			g.events.add(m.Event, m.Text)
		}
		return
	}
	g.mu.Lock()
	ch := g.pending[m.ID]
	delete(g.pending, m.ID)
	g.mu.Unlock()
	if ch != nil {
		ch <- m
	}
}

// do asks the worker to run op with arg and returns its answer.
func (g *guest) do(ctx context.Context, op, arg string) (string, error) {
	if g == nil {
		return "", fmt.Errorf("%s: this VM has no guest channel", op)
	}
	ch := make(chan worker.ChannelMessage, 1)
	g.mu.Lock()
	g.nextID++
	id := g.nextID
	g.pending[id] = ch
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		delete(g.pending, id)
		g.mu.Unlock()
	}()
	b, _ := json.Marshal(worker.ChannelRequest{ID: id, Op: op, Arg: arg})
	if err := g.port.write(append(b, '\n')); err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	select {
	case m := <-ch:
		if !m.OK {
			return "", fmt.Errorf("%s: guest: %s", op, m.Error)
		}
		return m.Data, nil
	case <-ctx.Done():
		return "", fmt.Errorf("%s: %w: %w", op, ErrNoGuest, ctx.Err())
	}
}
