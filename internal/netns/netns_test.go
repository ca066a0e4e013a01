package netns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/testenv"
)

func need(t *testing.T) context.Context {
	t.Helper()
	testenv.NeedVM(t)
	testenv.NeedRoot(t)
	testenv.NeedProgram(t, "ip")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newNS(t *testing.T, ctx context.Context) *NS {
	t.Helper()
	n, err := New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Delete(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return n
}

func TestSocketsStayInside(t *testing.T) {
	ctx := need(t)
	n := newNS(t, ctx)

	out, err := n.Output(ctx, "ip", "-o", "link", "show")
	if err != nil {
		t.Fatal(err)
	}
	if links := strings.Count(strings.TrimSpace(string(out)), "\n") + 1; links != 1 || !strings.Contains(string(out), "lo:") || !strings.Contains(string(out), "UP") {
		t.Errorf("links in %s = %q, want only lo, up", n.Name, out)
	}

	// iproute2 sees it as one of its own.
	list, err := exec.CommandContext(ctx, "ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(strings.Fields(string(list)), n.Name) {
		t.Errorf("ip netns list = %q, want %s in it", list, n.Name)
	}

	l, err := n.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("inside\n"))
			c.Close()
		}
	}()
	addr := l.Addr().String()

	// From the root namespace, the port is not there.
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("dial %s from the root namespace succeeded, want refused", addr)
	}
	// From inside, it is.
	err = n.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		b := make([]byte, 7)
		_, err = c.Read(b)
		if string(b) != "inside\n" {
			return fmt.Errorf("read %q, want inside", b)
		}
		return err
	})
	if err != nil {
		t.Errorf("dial %s inside %s: %v", addr, n.Name, err)
	}

	pc, err := n.ListenPacket(ctx, "udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc.Close()
}

func TestDelete(t *testing.T) {
	ctx := need(t)
	n, err := New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Create(ctx, n.Name); err == nil {
		t.Errorf("Create(%s) of a name in use succeeded", n.Name)
	}
	if err := n.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(n.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s after Delete: %v, want it gone", n.Path(), err)
	}
	if err := n.Delete(ctx); err == nil || !strings.Contains(err.Error(), n.Name) {
		t.Errorf("second Delete = %v, want an error naming %s", err, n.Name)
	}
}

func TestCleanup(t *testing.T) {
	ctx := need(t)
	// A namespace named after a process that is gone.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := fmt.Sprintf("%s%d-1", prefix, cmd.Process.Pid)
	if _, err := Create(ctx, dead); err != nil {
		t.Fatal(err)
	}
	mine := newNS(t, ctx)

	// Kept (a suspended VM's), it stays though its maker is gone.
	if deleted, err := Cleanup(ctx, slog.New(slog.DiscardHandler), dead); err != nil || slices.Contains(deleted, dead) {
		t.Errorf("Cleanup(keep %s) = %v, %v; want it kept", dead, deleted, err)
	}
	deleted, err := Cleanup(ctx, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(deleted, dead) || slices.Contains(deleted, mine.Name) {
		t.Errorf("Cleanup() = %v, want %s deleted and not %s", deleted, dead, mine.Name)
	}
	names, err := List()
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(names, dead) || !slices.Contains(names, mine.Name) {
		t.Errorf("List() after Cleanup = %v, want %s and not %s", names, mine.Name, dead)
	}
}
