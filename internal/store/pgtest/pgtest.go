// Package pgtest starts throwaway PostgreSQL servers for tests and
// benchmarks, from Debian's postgresql package: initdb into a fresh
// directory, then postgres on a free loopback port (and a unix socket in
// that directory), run as the unprivileged user nobody when the caller is
// root, since PostgreSQL refuses to run as root. The server is a child of
// this process in a process group of its own, killed with it if it dies;
// Stop shuts it down at once (PostgreSQL's immediate mode) and removes what
// it made. Nothing is left running.
//
// The programs are looked for in /usr/lib/postgresql/VERSION/bin, newest
// version first, then in PATH. NewServer and Start skip a test when
// PostgreSQL is missing, and fail it when BUILDFARM_VM_TESTS=1 (see
// package testenv), where scripts/deps has installed it.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// Server is a running PostgreSQL server.
type Server struct {
	dir     string // holds data/, the socket and server.log
	removes bool   // Stop removes dir: StartServer made it
	port    int
	cmd     *exec.Cmd
	done    chan struct{} // closed when the server has exited
	waitErr error
	stop    sync.Once
	stopErr error
	dbs     atomic.Int64
}

// Superuser is the name of the server's superuser, which needs no
// password on its loopback port and socket.
const Superuser = "postgres"

// Bin returns the directory of PostgreSQL's programs (initdb, postgres).
func Bin() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	version := func(d string) int {
		n, _ := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		return n
	}
	slices.SortFunc(dirs, func(a, b string) int { return version(b) - version(a) })
	for _, d := range dirs {
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if p, err := filepath.EvalSymlinks(p); err == nil && isExec(filepath.Join(filepath.Dir(p), "postgres")) {
			return filepath.Dir(p), nil
		}
	}
	return "", errors.New("PostgreSQL's initdb and postgres not found in /usr/lib/postgresql/*/bin or PATH (Debian's postgresql package; scripts/deps installs it)")
}

func isExec(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// StartServer initialises a database cluster in dir and starts a server
// on it, ready for connections when StartServer returns. An empty dir
// means a new temporary directory, which Stop removes; another dir must
// be empty or missing, and (as root) reachable by the user nobody.
func StartServer(ctx context.Context, dir string) (*Server, error) {
	bin, err := Bin()
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir, done: make(chan struct{})}
	if dir == "" {
		if s.dir, err = os.MkdirTemp("", "buildfarm-pg-"); err != nil {
			return nil, fmt.Errorf("postgres: %w", err)
		}
		s.removes = true
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if err := s.start(ctx, bin); err != nil {
		if s.removes {
			os.RemoveAll(s.dir)
		}
		return nil, err
	}
	return s, nil
}

// as is the user the server runs as: nil for this process's own, nobody
// for root.
func as() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		return nil, fmt.Errorf("postgres: PostgreSQL does not run as root, and the user to run it as: %w", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("postgres: user nobody: %w", err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func (s *Server) start(ctx context.Context, bin string) error {
	cred, err := as()
	if err != nil {
		return err
	}
	if cred != nil {
		if err := os.Chown(s.dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
		// Each directory above must let nobody through.
		for d := filepath.Dir(s.dir); ; d = filepath.Dir(d) {
			st, err := os.Stat(d)
			if err != nil {
				return fmt.Errorf("postgres: %w", err)
			}
			if st.Mode().Perm()&0o001 == 0 {
				return fmt.Errorf("postgres: %s is not reachable by the user nobody (mode %v): choose another directory", d, st.Mode().Perm())
			}
			if d == "/" {
				break
			}
		}
	}
	run := func(ctx context.Context, name string, args ...string) *exec.Cmd {
		cmd := proc.Command(ctx, filepath.Join(bin, name), args...)
		cmd.SysProcAttr.Credential = cred
		cmd.Dir = s.dir
		cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C", "TZ=UTC", "HOME=" + s.dir}
		return cmd
	}
	data := filepath.Join(s.dir, "data")
	if err := proc.Wait(run(ctx, "initdb", "-D", data, "-U", Superuser, "--auth=trust", "-E", "UTF8",
		"--no-locale", "--no-sync", "--no-instructions")); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	// A port that was free a moment ago may be taken by the time the
	// server binds it: then try another.
	var lastErr error
	for range 3 {
		if s.port, err = freePort(); err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
		logf, err := os.OpenFile(filepath.Join(s.dir, "server.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
		// Not ctx: the server outlives the start.
		s.cmd = run(context.Background(), "postgres", "-D", data, "-k", s.dir, "-h", "127.0.0.1",
			"-p", strconv.Itoa(s.port), "-F", "-c", "max_connections=200")
		s.cmd.Stdout, s.cmd.Stderr = logf, logf
		err = s.cmd.Start()
		logf.Close()
		if err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
		s.done = make(chan struct{})
		go func(cmd *exec.Cmd, done chan struct{}) {
			s.waitErr = cmd.Wait()
			close(done)
		}(s.cmd, s.done)
		if lastErr = s.ready(ctx); lastErr == nil {
			return nil
		}
		s.kill()
		if !strings.Contains(lastErr.Error(), "could not bind") {
			break
		}
	}
	return lastErr
}

// ready waits until the server takes connections, or has exited.
func (s *Server) ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		conn, err := pgx.Connect(ctx, s.DSN())
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		select {
		case <-s.done:
			return fmt.Errorf("postgres on port %d exited (%v): %s", s.port, s.waitErr, s.Log())
		case <-ctx.Done():
			return fmt.Errorf("postgres on port %d not ready: %w: %s", s.port, err, s.Log())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// kill shuts the server down at once: SIGQUIT is PostgreSQL's immediate
// shutdown (pg_ctl stop -m immediate); SIGKILL to its process group
// after 10 s.
func (s *Server) kill() error {
	if err := s.cmd.Process.Signal(syscall.SIGQUIT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("postgres: stop: %w", err)
	}
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		proc.KillGroup(s.cmd, syscall.SIGKILL)
		<-s.done
	}
	// The backends are in the server's process group: none may stay.
	proc.KillGroup(s.cmd, syscall.SIGKILL)
	return nil
}

// Stop shuts the server down and removes its directory if StartServer
// made it. It may be called more than once.
func (s *Server) Stop() error {
	s.stop.Do(func() {
		s.stopErr = s.kill()
		if s.removes {
			s.stopErr = errors.Join(s.stopErr, os.RemoveAll(s.dir))
		}
	})
	return s.stopErr
}

// DSN returns the URL of the server's postgres database, as the
// superuser, over loopback TCP.
func (s *Server) DSN() string { return s.dsn("postgres") }

func (s *Server) dsn(db string) string {
	u := url.URL{Scheme: "postgres", User: url.User(Superuser), Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)),
		Path: "/" + db, RawQuery: "sslmode=disable"}
	return u.String()
}

// Port returns the server's TCP port on 127.0.0.1.
func (s *Server) Port() int { return s.port }

// Log returns the tail of the server's log.
func (s *Server) Log() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return strings.TrimSpace(string(b))
}

// NewDatabase creates an empty database on the server and returns its URL.
func (s *Server) NewDatabase(ctx context.Context) (string, error) {
	name := fmt.Sprintf("test%d", s.dbs.Add(1))
	conn, err := pgx.Connect(ctx, s.DSN())
	if err != nil {
		return "", fmt.Errorf("postgres: create database %s: %w", name, err)
	}
	defer conn.Close(ctx)
	// The name is ours, and a name cannot be a parameter.
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("postgres: create database %s: %w", name, err)
	}
	return s.dsn(name), nil
}

// freePort returns a TCP port on 127.0.0.1 that no one listens on now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// NewServer starts a server for t and stops it when t ends. Without
// PostgreSQL it skips t, or fails it when BUILDFARM_VM_TESTS=1.
func NewServer(t testing.TB) *Server {
	t.Helper()
	if _, err := Bin(); err != nil {
		if testenv.VMTests() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	s, err := StartServer(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// Start starts a server for t, stopped when t ends, and returns the URL
// of an empty database on it.
func Start(t testing.TB) string {
	t.Helper()
	s := NewServer(t)
	dsn, err := s.NewDatabase(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return dsn
}
