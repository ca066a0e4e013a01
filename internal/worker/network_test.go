package worker

import (
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/buildfarm/buildfarm/internal/testenv"
)

func TestParseStaticNet(t *testing.T) {
	n, err := ParseStaticNet("eth0 10.0.2.15/24 10.0.2.2")
	if err != nil || n.NIC != "eth0" || n.Addr.String() != "10.0.2.15/24" || n.Gateway.String() != "10.0.2.2" {
		t.Errorf("ParseStaticNet = %+v, %v", n, err)
	}
	for in, want := range map[string]string{
		"eth0 10.0.2.15/24":                           "want NIC ADDRESS/PREFIX GATEWAY",
		"eth0 10.0.2.15 10.0.2.2":                     `"10.0.2.15" is not an IPv4 ADDRESS/PREFIX`,
		"eth0 fd00::1/64 fd00::2":                     "not an IPv4 ADDRESS/PREFIX",
		"eth0 10.0.2.15/24 10.0.3.2":                  "gateway \"10.0.3.2\" is not an IPv4 address on 10.0.2.0/24",
		"averyveryverylongname 10.0.2.15/24 10.0.2.2": "is not an interface name",
	} {
		if _, err := ParseStaticNet(in); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), NetEnv) {
			t.Errorf("ParseStaticNet(%q) = %v, want an error naming %s and containing %q", in, err, NetEnv, want)
		}
	}
}

// TestStaticNetSet sets a static network up in a network namespace of
// its own, on one end of a veth pair (Set, then Finish), and reads it back
// with ip.
func TestStaticNetSet(t *testing.T) {
	testenv.NeedRoot(t)
	ip := testenv.NeedProgram(t, "ip")
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The thread enters a namespace of its own and is never
		// unlocked: it ends with the goroutine, and the namespace with
		// it.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		run := func(args ...string) string {
			out, err := exec.Command(ip, args...).CombinedOutput()
			if err != nil {
				t.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
			}
			return string(out)
		}
		run("link", "add", "d0", "type", "veth", "peer", "name", "d1")
		run("link", "set", "d1", "up")
		n, err := ParseStaticNet("d0 10.0.2.15/24 10.0.2.2")
		if err != nil {
			t.Error(err)
			return
		}
		if err := n.Set(); err != nil {
			t.Errorf("Set: %v", err)
			return
		}
		if out := run("-4", "-o", "addr", "show", "d0"); !strings.Contains(out, "inet 10.0.2.15/24") {
			t.Errorf("after Set, ip addr show d0: %q, want the address", out)
		}
		if out := run("-4", "route", "show", "default"); out != "" {
			t.Errorf("after Set, ip route show default: %q, want none yet", out)
		}
		if err := n.Finish(); err != nil {
			t.Errorf("Finish: %v", err)
			return
		}
		for _, c := range []struct {
			args []string
			want string
		}{
			{[]string{"-o", "link", "show", "lo"}, "UP"},
			{[]string{"-o", "link", "show", "d0"}, "UP"},
			{[]string{"-4", "-o", "addr", "show", "d0"}, "inet 10.0.2.15/24"},
			{[]string{"-4", "route", "show", "default"}, "default via 10.0.2.2 dev d0"},
		} {
			if out := run(c.args...); !strings.Contains(out, c.want) {
				t.Errorf("ip %s: %q, want %q in it", strings.Join(c.args, " "), out, c.want)
			}
		}
		if err := n.Set(); err == nil || !strings.Contains(err.Error(), "address 10.0.2.15/24 on d0") {
			t.Errorf("Set again: %v, want the address's refusal", err)
		}
		if err := n.Finish(); err == nil || !strings.Contains(err.Error(), "default route via 10.0.2.2 on d0") {
			t.Errorf("Finish again: %v, want the route's refusal", err)
		}
	}()
	<-done
}
