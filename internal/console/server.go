package console

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/buildfarm/buildfarm/internal/qemu"
	"github.com/buildfarm/buildfarm/internal/qmp"
	"github.com/buildfarm/buildfarm/internal/worker"
)

// The sockets in a VM's directory: the console's, and QEMU's for the
// serial console and the guest channel's ports (SetPorts).
const (
	SocketName       = "console.sock"
	SerialSocketName = "serial.sock"
	GuestSocketName  = "guest.sock"
	NotifySocketName = "notify.sock"
)

// DefaultLinkDir holds the predictable console paths of the host's agents.
const DefaultLinkDir = "/run/buildfarm/console"

// LinkPath is the predictable path of the console of the VM that agent
// instance instance of toolchain runs now, in dir (DefaultLinkDir):
// DIR/TOOLCHAIN-INSTANCE.sock, a symbolic link to the VM's console socket.
func LinkPath(dir, toolchain string, instance int) string {
	return filepath.Join(dir, fmt.Sprintf("%s-%d.sock", toolchain, instance))
}

// SlotLinkPath is LinkPath for slot slot (from 1) of an agent instance
// that runs several VMs at once: DIR/TOOLCHAIN-INSTANCE.SLOT.sock.
func SlotLinkPath(dir, toolchain string, instance, slot int) string {
	return filepath.Join(dir, fmt.Sprintf("%s-%d.%d.sock", toolchain, instance, slot))
}

// SetPorts gives cfg, a VM working in dir, what its console needs: the
// serial console on dir/serial.sock (still logged to the serial log) and
// the guest channel's virtio-serial ports on dir/guest.sock and
// dir/notify.sock.
func SetPorts(cfg *qemu.Config, dir string) {
	cfg.SerialSocket = filepath.Join(dir, SerialSocketName)
	cfg.Ports = append(cfg.Ports,
		qemu.Port{Name: worker.ConsolePort, Socket: filepath.Join(dir, GuestSocketName)},
		qemu.Port{Name: worker.NotifyPort, Socket: filepath.Join(dir, NotifySocketName)})
}

// Config is a console server's VM.
type Config struct {
	Name   string      // the VM's name, for messages
	Socket string      // where to listen; a stale socket there is replaced
	Links  []string    // symbolic links to Socket, made at Start, removed at Close
	QMP    *qmp.Client // the VM's QMP connection (QEMU serves one at a time)

	// QEMU's sockets: the serial console (for attach) and the guest
	// channel's ports. Each may be empty, and the commands that need it
	// then fail. FromInfo fills them in from a qemu.Info.
	Serial     string
	GuestPort  string
	NotifyPort string

	Backlog int // notifications kept for notify; default 1000
	Log     *slog.Logger
}

// FromInfo returns the configuration of a console for the running VM
// described by info, on dir/console.sock, with QMP client c.
func FromInfo(info qemu.Info, c *qmp.Client) Config {
	cfg := Config{Name: info.Name, Socket: filepath.Join(info.Dir, SocketName), QMP: c, Serial: info.SerialSocket}
	for _, p := range info.Ports {
		switch p.Name {
		case worker.ConsolePort:
			cfg.GuestPort = p.Socket
		case worker.NotifyPort:
			cfg.NotifyPort = p.Socket
		}
	}
	return cfg
}

// FromDir returns the configuration of a console for the VM name whose
// working directory dir holds the sockets SetPorts named, with QMP client
// c: for a VM this process did not start, such as a suspended VM that an
// agent finds again after a restart (dial its QMP socket first; QEMU
// serves one QMP client at a time).
func FromDir(name, dir string, c *qmp.Client) Config {
	return Config{Name: name, Socket: filepath.Join(dir, SocketName), QMP: c,
		Serial:     filepath.Join(dir, SerialSocketName),
		GuestPort:  filepath.Join(dir, GuestSocketName),
		NotifyPort: filepath.Join(dir, NotifySocketName)}
}

// StartVM starts the console of vm, which runs (Start has returned), on
// its directory's console.sock, with links to it: what the agent calls
// after starting a VM configured with SetPorts.
func StartVM(ctx context.Context, vm *qemu.VM, log *slog.Logger, links ...string) (*Server, error) {
	cfg := FromInfo(vm.Info(), vm.QMP())
	cfg.Links, cfg.Log = links, log
	return Start(ctx, cfg)
}

// Server is a running console. Close it when the VM is gone.
type Server struct {
	cfg    Config
	log    *slog.Logger
	ln     net.Listener
	guest  *guest
	events *hub
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	added    map[string]string // devices config added: name → disk or nic
	attached bool
	closed   bool
}

// Start listens on cfg.Socket, makes cfg.Links, connects to the guest
// channel's ports and serves until Close. ctx bounds only the start.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.QMP == nil {
		return nil, fmt.Errorf("console %s: no QMP connection", cfg.Name)
	}
	if cfg.Backlog <= 0 {
		cfg.Backlog = 1000
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if len(cfg.Socket) > 107 {
		return nil, fmt.Errorf("console %s: socket path %s is too long for a unix socket", cfg.Name, cfg.Socket)
	}
	if fi, err := os.Lstat(cfg.Socket); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(cfg.Socket) // a console that died before it could clean up
	}
	ln, err := net.Listen("unix", cfg.Socket)
	if err != nil {
		return nil, fmt.Errorf("console %s: %w", cfg.Name, err)
	}
	os.Chmod(cfg.Socket, 0o600)
	for _, l := range cfg.Links {
		if err := link(cfg.Socket, l); err != nil {
			ln.Close()
			return nil, fmt.Errorf("console %s: %w", cfg.Name, err)
		}
	}
	sctx, cancel := context.WithCancel(context.Background())
	s := &Server{cfg: cfg, log: log.With("console", cfg.Name), ln: ln, events: newHub(cfg.Backlog),
		cancel: cancel, conns: make(map[net.Conn]struct{}), added: make(map[string]string)}
	if cfg.GuestPort != "" {
		s.guest = newGuest(cfg.GuestPort, s.events)
		s.goRun(func() { s.guest.port.run(sctx) })
	}
	if cfg.NotifyPort != "" {
		p := &port{path: cfg.NotifyPort, line: func(b []byte) {
			s.events.add("notify", strings.TrimRight(string(b), "\r\n"))
		}}
		s.goRun(func() { p.run(sctx) })
	}
	s.goRun(func() { s.accept(sctx) })
	return s, nil
}

func (s *Server) goRun(f func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
}

// link makes path a symbolic link to target, replacing what was there.
func link(target, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// Socket returns the path the console listens on.
func (s *Server) Socket() string { return s.cfg.Socket }

// Request asks the worker, over the guest channel, to run op with arg
// (worker.ChannelRequest) and returns its answer; ErrNoGuest while the
// channel is not connected. The agent hands a restored worker its start
// so (op start).
func (s *Server) Request(ctx context.Context, op, arg string) (string, error) {
	return s.guest.do(ctx, op, arg)
}

// Events returns the worker's and the guest programs' notifications kept
// so far, each a line "TIME EVENT TEXT", and a channel of the next ones;
// cancel ends the subscription.
func (s *Server) Events() (backlog []string, next <-chan string, cancel func()) {
	return s.events.subscribe()
}

// Close stops the console: it closes the socket and every connection,
// and removes the socket and the links that still point to it.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.cancel()
	err := s.ln.Close()
	s.wg.Wait()
	for _, l := range s.cfg.Links {
		if t, lerr := os.Readlink(l); lerr == nil && t == s.cfg.Socket {
			os.Remove(l)
		}
	}
	os.Remove(s.cfg.Socket)
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

func (s *Server) accept(ctx context.Context) {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.goRun(func() {
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			s.serve(ctx, c)
		})
	}
}

// serve answers the commands of one connection.
func (s *Server) serve(ctx context.Context, c net.Conn) {
	r := bufio.NewReaderSize(c, 64<<10)
	w := bufio.NewWriter(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		if strings.TrimSpace(line) == "" {
			continue
		}
		name, arg, _ := strings.Cut(strings.TrimLeft(line, " \t"), " ")
		cmd := lookup(name)
		if cmd == nil {
			writeReply(w, fmt.Errorf("unknown command %q (try help)", name), "", "")
			if w.Flush() != nil {
				return
			}
			continue
		}
		if cmd.stream != nil {
			s.log.Info("console command", "command", name)
			cmd.stream(s, ctx, arg, c, r)
			return
		}
		s.log.Info("console command", "command", name, "arg", arg)
		cctx, cancel := context.WithTimeout(ctx, cmd.timeout())
		msg, body, err := cmd.run(s, cctx, arg)
		cancel()
		writeReply(w, err, msg, body)
		if w.Flush() != nil {
			return
		}
	}
}

// writeReply writes a status line, the body dot-stuffed, and the final ".".
func writeReply(w io.Writer, err error, msg, body string) {
	status := "OK"
	if err != nil {
		status, msg = "ERR", err.Error()
	}
	msg = strings.NewReplacer("\n", " ", "\r", " ").Replace(msg)
	if msg != "" {
		status += " " + msg
	}
	var b strings.Builder
	b.WriteString(status + "\n")
	if body != "" {
		for l := range strings.Lines(body) {
			l = strings.TrimRight(l, "\n")
			if strings.HasPrefix(l, ".") {
				b.WriteString(".")
			}
			b.WriteString(l + "\n")
		}
	}
	b.WriteString(".\n")
	io.WriteString(w, b.String())
}

// notify streams the notifications: those kept, then new ones, until the
// client closes the connection or the console ends.
func (s *Server) notify(ctx context.Context, c net.Conn, r *bufio.Reader) {
	backlog, next, cancel := s.events.subscribe()
	defer cancel()
	gone := make(chan struct{})
	go func() { io.Copy(io.Discard, r); close(gone) }()
	w := bufio.NewWriter(c)
	w.WriteString("OK\n")
	for _, l := range backlog {
		w.WriteString(l + "\n")
	}
	if w.Flush() != nil {
		return
	}
	for {
		select {
		case l := <-next:
			c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(c, l+"\n"); err != nil {
				return
			}
		case <-gone:
			return
		case <-ctx.Done():
			return
		}
	}
}

// attach relays the connection to the serial console's socket.
func (s *Server) attach(ctx context.Context, c net.Conn, r *bufio.Reader) {
	fail := func(err error) {
		writeReply(c, err, "", "")
	}
	if s.cfg.Serial == "" {
		fail(errors.New("attach: this VM's serial console is not on a socket"))
		return
	}
	s.mu.Lock()
	busy := s.attached
	s.attached = true
	s.mu.Unlock()
	if busy {
		fail(errors.New("attach: someone is attached already"))
		return
	}
	defer func() {
		s.mu.Lock()
		s.attached = false
		s.mu.Unlock()
	}()
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	sc, err := d.DialContext(dctx, "unix", s.cfg.Serial)
	cancel()
	if err != nil {
		fail(fmt.Errorf("attach: %w", err))
		return
	}
	defer sc.Close()
	if _, err := io.WriteString(c, "OK\n"); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() { io.Copy(sc, r); done <- struct{}{} }()
	go func() { io.Copy(c, sc); done <- struct{}{} }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}
