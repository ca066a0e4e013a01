package hostos

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"mime/quotedprintable"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/notify"
	"github.com/buildfarm/buildfarm/internal/notify/notifytest"
)

// The test binary is also a fake agent (helper process) when
// HOSTOS_FAKE_AGENT names a directory: it writes its arguments to
// <dir>/<instance>.<pid>.args; with a file <dir>/crash it writes "boom" to
// standard error and exits 3; otherwise it waits, and on the drain signal
// (SIGHUP) writes <dir>/<instance>.<pid>.drained and exits 0.
func TestMain(m *testing.M) {
	if dir := os.Getenv("HOSTOS_FAKE_AGENT"); dir != "" {
		os.Exit(fakeAgent(dir, os.Args[1:]))
	}
	os.Exit(m.Run())
}

func fakeAgent(dir string, args []string) int {
	inst := "?"
	for i, a := range args {
		if a == "--instance" && i+1 < len(args) {
			inst = args[i+1]
		}
	}
	name := filepath.Join(dir, fmt.Sprintf("%s.%d", inst, os.Getpid()))
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP, syscall.SIGTERM)
	os.WriteFile(name+".args", []byte(strings.Join(args, "\n")), 0o644)
	if _, err := os.Stat(filepath.Join(dir, "crash")); err == nil {
		fmt.Fprintln(os.Stderr, "boom")
		return 3
	}
	if s := <-hup; s == syscall.SIGHUP {
		os.WriteFile(name+".drained", nil, 0o644)
	}
	return 0
}

// fakeAgents is a directory where fake agents leave their traces.
type fakeAgents struct{ dir string }

func (f fakeAgents) glob(pattern string) []string {
	m, _ := filepath.Glob(filepath.Join(f.dir, pattern))
	return m
}

func (f fakeAgents) wait(t *testing.T, pattern string, n int, within time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		if m := f.glob(pattern); len(m) >= n {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d files %s within %v, want %d", len(f.glob(pattern)), pattern, within, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (f fakeAgents) args(t *testing.T, file string) string {
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return " " + strings.ReplaceAll(string(b), "\n", " ") + " "
}

// newMonitor returns a monitor of config line whose agents are fake.
func newMonitor(t *testing.T, line string) (*Monitor, fakeAgents) {
	c, err := ParseCmdline(line)
	if err != nil {
		t.Fatal(err)
	}
	d, err := Derive(c, Host{CPUs: 8, RAMKiB: 12 << 20})
	if err != nil {
		t.Fatal(err)
	}
	fa := fakeAgents{dir: t.TempDir()}
	t.Setenv("HOSTOS_FAKE_AGENT", fa.dir)
	exe, _ := os.Executable()
	return &Monitor{
		Config: d, Toolchains: &Toolchains{Dir: t.TempDir(), Fetch: &Fetcher{}},
		Agent: []string{exe}, Machines: "/m", TFTP: "/t", Poll: 100 * time.Millisecond, BackoffMax: time.Second,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, fa
}

// withMail gives m a mailer to a mailbox of the test's, which it returns;
// the mailer runs until the test ends.
func withMail(t *testing.T, m *Monitor) *notifytest.Mailbox {
	mb, relay := notifytest.Start(t)
	mail, err := notify.New(notify.Config{Relay: relay, To: "admin@example.org", Interval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	mailed := make(chan struct{})
	go func() { defer close(mailed); mail.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-mailed })
	m.Mail = mail
	return mb
}

// mailText returns the headers and decoded bodies of the mail in mb (the
// bodies are quoted-printable, which folds long lines).
func mailText(t *testing.T, mb *notifytest.Mailbox) string {
	var all string
	for _, ml := range mb.All() {
		head, body, _ := strings.Cut(ml.Data, "\r\n\r\n")
		dec, err := io.ReadAll(quotedprintable.NewReader(strings.NewReader(body)))
		if err != nil {
			t.Fatalf("mail body: %v\n%s", err, ml.Data)
		}
		all += head + "\n\n" + string(dec)
	}
	return all
}

// runMonitor runs m in the background until the test ends; the channel
// is closed when Run returned, with its error in *err.
func runMonitor(t *testing.T, m *Monitor) (done chan struct{}, err *error) {
	ctx, cancel := context.WithCancel(context.Background())
	done, err = make(chan struct{}), new(error)
	go func() { defer close(done); *err = m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("the monitor did not return within 30 s of its cancellation")
		}
	})
	return done, err
}

// TestMonitorToolchainChange (ordinary host): the agents start with their
// slice, nice value, controllers and trust; a new toolchain upstream
// drains them and starts them again on it.
func TestMonitorToolchainChange(t *testing.T) {
	up := newUpstream(t)
	url := up.publish(t, "toolchain.sha256", v017, nil)
	m, fa := newMonitor(t, "buildos.toolchain_url="+url+" buildos.instances=2 buildos.nice=7 "+
		"buildos.controller_url=http://c1/ buildos.controller_url=http://c2/ buildos.controller_trust=AA:BB")
	runMonitor(t, m)
	first := fa.wait(t, "*.args", 2, 30*time.Second)
	for _, f := range first {
		a := fa.args(t, f)
		// 8 CPUs, 12 GiB less 4 GiB, two instances: 4 CPUs, 4 GiB each.
		for _, want := range []string{" --cpu 4 ", " --ram 4096 ", " --instances 1 ", " --toolchain-name default ", " --toolchain-ver 0.17.0 ",
			" --trust AA:BB ", " --machines /m ", " --tftp /t ", " http://c1/ http://c2/ "} {
			if !strings.Contains(a, want) {
				t.Errorf("%s: agent arguments%slack %q", filepath.Base(f), a, want)
			}
		}
		pid := strings.Split(filepath.Base(f), ".")[1]
		if n := niceOf(t, pid); n != 7 {
			t.Errorf("agent %s: nice %d, want 7", pid, n)
		}
	}
	if !strings.Contains(fa.args(t, first[0]), " --instance 1 ") || !strings.Contains(fa.args(t, first[1]), " --instance 2 ") {
		t.Errorf("instances: %v, want 1 and 2", first)
	}
	up.publish(t, "toolchain.sha256", [][2]string{{"build2-toolchain-0.18.0.tar.xz", "0.18"}}, nil)
	fa.wait(t, "*.drained", 2, 30*time.Second)
	all := fa.wait(t, "*.args", 4, 30*time.Second)
	for _, f := range all {
		if !strings.Contains(strings.Join(first, " "), f) && !strings.Contains(fa.args(t, f), " --toolchain-ver 0.18.0 ") {
			t.Errorf("restarted agent %s: %s, want --toolchain-ver 0.18.0", filepath.Base(f), fa.args(t, f))
		}
	}
}

// niceOf returns process pid's nice value (/proc/PID/stat field 19),
// waiting a little for the monitor to set it.
func niceOf(t *testing.T, pid string) int {
	n := 0
	for range 50 {
		b, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+2:])
		fmt.Sscan(f[16], &n)
		if n != 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return n
}

// TestMonitorCrash: an agent that exits is restarted, and the admin gets
// the crash with the end of its output.
func TestMonitorCrash(t *testing.T) {
	up := newUpstream(t)
	url := up.publish(t, "toolchain.sha256", v017, nil)
	m, fa := newMonitor(t, "buildos.toolchain_url="+url+" buildos.controller_url=http://c/")
	os.WriteFile(filepath.Join(fa.dir, "crash"), nil, 0o644)
	mb := withMail(t, m)
	runMonitor(t, m)
	fa.wait(t, "1.*.args", 3, 30*time.Second)
	mb.Wait(t, 20*time.Second, "crash mail")
	all := mailText(t, mb)
	for _, want := range []string{notify.AgentCrashed, "boom", "instance 1"} {
		if !strings.Contains(all, want) {
			t.Errorf("mail lacks %q:\n%s", want, all)
		}
	}
}

// TestMonitorBuildIDReboots (host OS): a new build id upstream drains the
// agents, then reboots.
func TestMonitorBuildIDReboots(t *testing.T) {
	up := newUpstream(t)
	url := up.publish(t, "toolchain.sha256", v017, nil)
	os.WriteFile(filepath.Join(up.dir, "buildos-buildid"), []byte("build-1\n"), 0o644)
	m, fa := newMonitor(t, "buildos.toolchain_url="+url+" buildos.controller_url=http://c/ buildos.buildid_url="+up.srv.URL+"/buildos-buildid")
	m.HostOS = true
	rebooted := make(chan struct{})
	m.Reboot = func(context.Context) error { close(rebooted); return nil }
	done, runErr := runMonitor(t, m)
	fa.wait(t, "*.args", 1, 30*time.Second)
	select {
	case <-rebooted:
		t.Fatal("rebooted with the same build id")
	case <-time.After(500 * time.Millisecond):
	}
	os.WriteFile(filepath.Join(up.dir, "buildos-buildid"), []byte("build-2\n"), 0o644)
	select {
	case <-rebooted:
	case <-time.After(30 * time.Second):
		t.Fatal("no reboot within 30 s of a new build id")
	}
	if len(fa.glob("*.drained")) != 1 {
		t.Errorf("rebooted with %d agents drained, want 1", len(fa.glob("*.drained")))
	}
	select {
	case <-done:
		if *runErr != nil {
			t.Errorf("Run = %v after the reboot", *runErr)
		}
	case <-time.After(10 * time.Second):
		t.Error("Run did not return after the reboot")
	}
}

// TestAgentArgsBridgeAndKey: on the host OS every agent gets its
// toolchain's bridge (br1 by default); on an ordinary host only a
// toolchain whose configuration names a bridge does; the agents' key is
// every agent's --auth-key.
func TestAgentArgsBridgeAndKey(t *testing.T) {
	line := "buildos.toolchain_url=http://h/t.sha256 buildos.controller_url=http://c/ " +
		"buildos.toolchain_url.pub=http://h/p.sha256 buildos.controller_url.pub=http://c/ buildos.bridge.pub=br0 " +
		"buildos.toolchain_url.priv=http://h/q.sha256 buildos.controller_url.priv=http://c/ buildos.bridge.priv=br1"
	cur := &Installed{Version: "1.0", ID: "id", Dir: "/t/toolchains/x"}
	for _, tc := range []struct {
		hostOS bool
		key    *HostKey
		want   map[string]string // toolchain -> its --bridge ("" none)
	}{
		{true, nil, map[string]string{"default": "br1", "pub": "br0", "priv": "br1"}},
		{false, &HostKey{Path: "/etc/buildfarm/host-key.pem"}, map[string]string{"default": "", "pub": "br0", "priv": "br1"}},
	} {
		m, _ := newMonitor(t, line)
		m.HostOS, m.HostKey = tc.hostOS, tc.key
		for _, dt := range m.Config.Toolchains {
			args := m.agentArgs(dt, cur, 1)
			got := ""
			for i, a := range args {
				if a == "--bridge" && i+1 < len(args) {
					if got != "" {
						t.Errorf("host OS %v, toolchain %s: --bridge twice: %q", tc.hostOS, dt.Name, args)
					}
					got = args[i+1]
				}
			}
			if got != tc.want[dt.Name] {
				t.Errorf("host OS %v, toolchain %s: --bridge %q, want %q (args %q)", tc.hostOS, dt.Name, got, tc.want[dt.Name], args)
			}
			joined := " " + strings.Join(args, " ") + " "
			if wantKey := tc.key != nil; strings.Contains(joined, " --auth-key ") != wantKey ||
				wantKey && !strings.Contains(joined, " --auth-key "+tc.key.Path+" ") {
				t.Errorf("host OS %v, toolchain %s: args %q; want --auth-key only with a key (%v)", tc.hostOS, dt.Name, args, tc.key)
			}
			// The controllers come last, after every option.
			if args[len(args)-1] != "http://c/" {
				t.Errorf("toolchain %s: args end with %q, want the controller", dt.Name, args[len(args)-1])
			}
		}
	}
}

// TestMonitorMailsNewKey: an agents' key made at this start is mailed to
// the admin with what registering it takes; the agents get it.
func TestMonitorMailsNewKey(t *testing.T) {
	up := newUpstream(t)
	url := up.publish(t, "toolchain.sha256", v017, nil)
	m, fa := newMonitor(t, "buildos.toolchain_url="+url+" buildos.controller_url=http://c/")
	k, err := EnsureHostKey(filepath.Join(t.TempDir(), StateKey))
	if err != nil {
		t.Fatal(err)
	}
	m.HostKey = k
	mb := withMail(t, m)
	runMonitor(t, m)
	f := fa.wait(t, "*.args", 1, 30*time.Second)
	if a := fa.args(t, f[0]); !strings.Contains(a, " --auth-key "+k.Path+" ") {
		t.Errorf("agent arguments%slack --auth-key %s", a, k.Path)
	}
	mb.Wait(t, 20*time.Second, "key mail")
	all := mailText(t, mb)
	// The mail indents the lines of its Why: each of the key's is there.
	wants := append([]string{EventHostKey, k.Fingerprint, "buildfarm controller key add"}, strings.Fields(string(k.PublicPEM))...)
	for _, want := range wants {
		if !strings.Contains(all, want) {
			t.Errorf("mail lacks %q:\n%s", want, all)
		}
	}
}
