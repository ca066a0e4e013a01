package tap

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/buildfarm/buildfarm/internal/netns"
	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// inNS runs fn in a fresh network namespace that the test deletes.
func inNS(t *testing.T, fn func() error) {
	t.Helper()
	testenv.NeedRoot(t)
	testenv.NeedProgram(t, "ip")
	ns, err := netns.New(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Delete(context.Background()) })
	if err := ns.Do(fn); err != nil {
		t.Fatal(err)
	}
}

func ip(t *testing.T, args ...string) string {
	t.Helper()
	out, err := proc.Output(context.Background(), "ip", args...)
	if err != nil {
		t.Fatalf("ip %s: %v", strings.Join(args, " "), err)
	}
	return string(out)
}

// TestTap makes a bridge in a namespace of its own, checks Bridge's
// errors and address, and makes, finds, cleans up and deletes taps on it.
func TestTap(t *testing.T) {
	inNS(t, func() error {
		ip(t, "link", "add", "brt", "type", "bridge")
		if _, err := Bridge("brt"); err == nil || !strings.Contains(err.Error(), "no IPv4 address") {
			t.Errorf("Bridge of a bridge without an address: %v, want no IPv4 address", err)
		}
		ip(t, "addr", "add", "10.9.0.1/24", "dev", "brt")
		ip(t, "link", "set", "brt", "up")
		if a, err := Bridge("brt"); err != nil || a.String() != "10.9.0.1" {
			t.Errorf("Bridge(brt) = %v, %v; want 10.9.0.1", a, err)
		}
		if _, err := Bridge("nosuch0"); err == nil || !strings.Contains(err.Error(), "no such interface") {
			t.Errorf("Bridge(nosuch0): %v, want no such interface", err)
		}
		if _, err := Bridge("lo"); err == nil || !strings.Contains(err.Error(), "not a bridge") {
			t.Errorf("Bridge(lo): %v, want not a bridge", err)
		}

		tp, err := New(context.Background(), "brt")
		if err != nil {
			t.Fatal(err)
		}
		if out := ip(t, "-o", "link", "show", "master", "brt"); !strings.Contains(out, tp.Name+":") || !strings.Contains(out, "UP") {
			t.Errorf("tap %s not up on brt:\n%s", tp.Name, out)
		}
		if _, err := New(context.Background(), "lo"); err == nil {
			t.Errorf("a tap on lo, which is no bridge, was made")
		}
		// A leftover of a dead agent, and one a process holds open.
		ip(t, "tuntap", "add", "mode", "tap", "name", "bft999999-1")
		ip(t, "tuntap", "add", "mode", "tap", "name", "bft999999-2")
		fd, err := unix.Open(tunDevice, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		ifr, _ := unix.NewIfreq("bft999999-2")
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			t.Fatal(err)
		}
		gone, err := Cleanup(context.Background(), slog.New(slog.DiscardHandler))
		if err != nil || !slices.Equal(gone, []string{"bft999999-1"}) {
			t.Errorf("Cleanup = %v, %v; want only the dead agent's unused tap", gone, err)
		}
		if err := tp.Delete(); err != nil {
			t.Error(err)
		}
		names, err := List()
		if err != nil || !slices.Equal(names, []string{"bft999999-2"}) {
			t.Errorf("taps after Delete: %v, %v; want only the one held open", names, err)
		}
		return nil
	})
}

func TestRandomMAC(t *testing.T) {
	a, err := RandomMAC()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := RandomMAC()
	if a == b {
		t.Errorf("two random MACs are both %s", a)
	}
	for _, m := range []string{a, b} {
		hw, err := net.ParseMAC(m)
		if err != nil || hw[0]&1 != 0 || hw[0]&2 == 0 {
			t.Errorf("MAC %s: want unicast and locally administered", m)
		}
	}
}
