// Package netns gives each VM a network namespace of its own, so that a
// guest on user-mode networking reaches the services bound to that
// namespace's loopback (the agent's TFTP socket for it) and nothing else.
// A namespace is made and deleted as iproute2's `ip netns add` and `ip
// netns delete` do (so it shows in `ip netns list` and lives in
// /run/netns), with the system calls themselves rather than by running
// `ip`: each task's VM gets one before QEMU starts, and the three
// programs a namespace took (add, loopback up, delete) cost 20-40 ms of
// it on a loaded host. Code runs inside one on a locked OS thread that is
// thrown away afterwards, and a socket opened there stays there.
// Namespaces are named bf-PID-N after the process that made them, so
// Cleanup can delete those whose process is gone.
//
// Needs root (CAP_SYS_ADMIN).
package netns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/buildfarm/buildfarm/internal/proc"
)

// Dir is where `ip netns` keeps its namespaces.
const Dir = "/run/netns"

// prefix starts the names of the namespaces this package makes.
const prefix = "bf-"

var seq atomic.Uint64

// NS is a named network namespace.
type NS struct {
	Name string
}

// Path is the namespace's file, for setns(2) or `ip netns exec`.
func (n *NS) Path() string { return filepath.Join(Dir, n.Name) }

// New makes a namespace with a fresh name (bf-PID-N) and its loopback up.
func New(ctx context.Context) (*NS, error) {
	return Create(ctx, fmt.Sprintf("%s%d-%d", prefix, os.Getpid(), seq.Add(1)))
}

// Create makes the namespace name with its loopback up.
func Create(ctx context.Context, name string) (*NS, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("netns %s: create: %w", name, err)
	}
	n := &NS{Name: name}
	if err := shareDir(); err != nil {
		return nil, fmt.Errorf("netns %s: create: %w", name, err)
	}
	// The file the namespace is bound to, made first: O_EXCL refuses a
	// name in use.
	fd, err := unix.Open(n.Path(), unix.O_RDONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("netns %s: create %s: %w", name, n.Path(), err)
	}
	unix.Close(fd)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		errc <- n.bind()
	}()
	if err := <-errc; err != nil {
		n.Delete(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("netns %s: create: %w", name, err)
	}
	return n, nil
}

// shareDir makes Dir a mount point shared with other mount namespaces
// (mount --make-rshared, after binding it onto itself if it is no mount
// point yet), as `ip netns add` does: a namespace unmounted in one mount
// namespace is then unmounted in all of them, and freed.
func shareDir() error {
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return err
	}
	err := unix.Mount("", Dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) { // not a mount point
		if err := unix.Mount(Dir, Dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("mount --bind %s %s: %w", Dir, Dir, err)
		}
		err = unix.Mount("", Dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("mount --make-rshared %s: %w", Dir, err)
	}
	return nil
}

// bind moves the calling thread, which the caller has locked and throws
// away, into a new network namespace, binds that namespace onto n's file,
// and sets its loopback up.
func (n *NS) bind() error {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("unshare: %w", err)
	}
	// thread-self: /proc/self is the process's main thread, elsewhere.
	if err := unix.Mount("/proc/thread-self/ns/net", n.Path(), "none", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("mount --bind /proc/thread-self/ns/net %s: %w", n.Path(), err)
	}
	return loopbackUp()
}

// loopbackUp sets the calling thread's network namespace's lo up.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback up: SIOCGIFFLAGS: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback up: SIOCSIFFLAGS: %w", err)
	}
	return nil
}

// Delete deletes the namespace: its file is unmounted (lazily) and
// removed. Sockets opened in it, and processes running in it, keep it
// alive without its name until they are closed or exit.
func (n *NS) Delete(ctx context.Context) error {
	if err := unix.Unmount(n.Path(), unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("netns %s: delete: unmount %s: %w", n.Name, n.Path(), err)
	}
	if err := os.Remove(n.Path()); err != nil {
		return fmt.Errorf("netns %s: delete: %w", n.Name, err)
	}
	return nil
}

// Enter moves the calling OS thread into the namespace at path. The caller
// must have locked its goroutine to the thread (runtime.LockOSThread) and
// must let the goroutine end without unlocking it, so that the runtime
// throws the thread away rather than reuse it in the wrong namespace.
// Processes started from the thread afterwards run in the namespace.
func Enter(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netns %s: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("netns %s: setns: %w", path, err)
	}
	return nil
}

// Do runs fn inside the namespace, on an OS thread of its own that is
// thrown away when fn returns. Sockets fn opens stay in the namespace;
// processes it starts and waits for run there (a process that should
// outlive fn must not use Pdeathsig, which fires when the thread ends).
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := Enter(n.Path()); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// ListenPacket opens a packet socket (for example "udp", "127.0.0.1:0")
// inside the namespace: the VM's TFTP socket.
func (n *NS) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	var c net.PacketConn
	err := n.Do(func() error {
		var lc net.ListenConfig
		var err error
		c, err = lc.ListenPacket(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns %s: listen %s %s: %w", n.Name, network, address, err)
	}
	return c, nil
}

// Listen opens a stream listener (for example "tcp", "127.0.0.1:0") inside
// the namespace.
func (n *NS) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() error {
		var lc net.ListenConfig
		var err error
		l, err = lc.Listen(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns %s: listen %s %s: %w", n.Name, network, address, err)
	}
	return l, nil
}

// Output runs a program inside the namespace to completion and returns its
// standard output (see proc.Output).
func (n *NS) Output(ctx context.Context, name string, args ...string) ([]byte, error) {
	var out []byte
	err := n.Do(func() error {
		var err error
		out, err = proc.Output(ctx, name, args...)
		return err
	})
	return out, err
}

// List returns the names of the namespaces in Dir made by this package.
func List() ([]string, error) {
	entries, err := os.ReadDir(Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("netns: %w", err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// Ours returns the names of the namespaces that this process made and has
// not deleted, and those whose maker is gone: what a test checks is empty
// when it ends, while other processes' live namespaces are theirs.
func Ours() ([]string, error) {
	names, err := List()
	if err != nil {
		return nil, err
	}
	var ours []string
	for _, name := range names {
		if pid := proc.NamePID(name, prefix); pid == os.Getpid() || (pid != 0 && !proc.Alive(pid)) {
			ours = append(ours, name)
		}
	}
	return ours, nil
}

// Cleanup deletes the namespaces that processes now gone left behind (an
// agent killed mid-task) and returns their names. The namespaces named in
// keep stay (those of suspended VMs, which outlive the agent that made
// them).
func Cleanup(ctx context.Context, log *slog.Logger, keep ...string) ([]string, error) {
	names, err := List()
	if err != nil {
		return nil, err
	}
	var deleted []string
	var errs []error
	for _, name := range names {
		pid := proc.NamePID(name, prefix)
		if pid == 0 || proc.Alive(pid) || slices.Contains(keep, name) {
			continue
		}
		if err := (&NS{Name: name}).Delete(ctx); err != nil {
			errs = append(errs, err)
			continue
		}
		log.Info("deleted a leftover network namespace", "netns", name, "pid", pid)
		deleted = append(deleted, name)
	}
	return deleted, errors.Join(errs...)
}
