package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime/quotedprintable"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/buildfarm/buildfarm/internal/image"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/notify"
	"github.com/buildfarm/buildfarm/internal/notify/notifytest"
)

// sleepingTask writes a copy of examples/hello whose update step sleeps
// for ten minutes, and returns its task manifest.
func sleepingTask(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join("..", "..", "examples", "hello")
	es, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if e.Name() == "task.manifest" {
			b = []byte(strings.Replace(string(b), "buildfarm-update: sh ./build.sh", "buildfarm-update: sleep 600", 1))
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "task.manifest")
}

// TestSuspendedSurvivesRestart is issue 10's "done when": a build that
// misses --build-timeout is suspended; its agent exits and the VM stays,
// paused; exactly one email reaches a real SMTP server; a restarted agent
// finds the VM and serves its console, through which `buildfarm console VM
// go` resumes it; after --suspend-limit the agent destroys it, leaving no
// process, snapshot, network namespace, TFTP directory or record.
func TestSuspendedSurvivesRestart(t *testing.T) {
	f := newFarm(t, false, image.Options{})
	buildfarm, _ := binaries(t)
	mb, relay := notifytest.Start(t)
	// The agents' tethers outlive them with the VM: let them be our
	// children, so that we reap them.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })
	const limit = 40 * time.Second
	args := func(more ...string) []string {
		return append([]string{"agent", "--machines", f.machines, "--tftp", f.tftp, "--accel", "tcg", "--ram", "256",
			"--registry", f.registry, "--console-links", f.links, "--fake-bootstrap",
			"--build-startup", "60s", "--build-timeout", "15s", "--build-retries", "0",
			"--smtp-relay", relay, "--admin-email", "admin@example.org", "--suspend-limit", limit.String()}, more...)
	}

	// 1. The first agent performs the task, suspends its VM, and exits.
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	first := exec.CommandContext(ctx, buildfarm, args("--fake-request", sleepingTask(t), "--dump-result")...)
	first.Stderr = f
	out, err := first.Output()
	if err != nil {
		t.Fatalf("first agent: %v\n%s", err, out)
	}
	res := parseResult(t, string(out))
	// The result names the operation that was running: update.
	if res.Status != manifest.StatusAbnormal || len(res.Results) != 1 || res.Results[0].Operation != "update" ||
		!strings.Contains(res.Results[0].Log, "deadline passed") {
		t.Errorf("result %v %+v, want abnormal in update, deadline passed", res.Status, res.Results)
	}
	rec := suspendedVM(t, f, "hello/1.0.0", "deadline passed")
	checkSuspended(t, rec, "paused")
	tether := parentOf(rec.PID)
	mb.Wait(t, 30*time.Second, "the mail about the suspended VM")
	// The body is quoted-printable: long lines are folded.
	body, _ := io.ReadAll(quotedprintable.NewReader(strings.NewReader(mb.All()[0].Data)))
	for _, want := range []string{notify.Suspended, "busybox", "hello/1.0.0", rec.Name, "deadline passed",
		"buildfarm console " + rec.Name + " go", rec.SerialLog} {
		if !strings.Contains(string(body), want) {
			t.Errorf("mail lacks %q:\n%s", want, body)
		}
	}

	// 2. The next agent finds the VM and serves its console.
	c := newTestController(t)
	second := exec.Command(buildfarm, args(c.url())...)
	second.Stdout, second.Stderr = f, f
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			second.Process.Kill()
			second.Wait()
		}
	})
	console := func(cmd ...string) (string, error) {
		out, err := exec.Command(buildfarm, append([]string{"console", "--registry", f.registry, rec.Name}, cmd...)...).CombinedOutput()
		return string(out), err
	}
	var version string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if version, err = console("version"); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || !strings.Contains(version, "vm "+rec.Name+": paused") {
		t.Fatalf("console version after the restart: %v\n%s\nwant the VM paused", err, version)
	}
	if out, err := console("go"); err != nil || !strings.HasPrefix(out, "OK running") {
		t.Errorf("console go: %v\n%s\nwant OK running", err, out)
	}
	if out, err := console("version"); err != nil || !strings.Contains(out, "vm "+rec.Name+": running") {
		t.Errorf("console version after go: %v\n%s\nwant QMP to say running", err, out)
	}
	if out, err := exec.Command(buildfarm, "vm", "list", "--registry", f.registry).CombinedOutput(); err != nil ||
		!strings.Contains(string(out), rec.Name) || !strings.Contains(string(out), "suspended") {
		t.Errorf("vm list: %v\n%s\nwant the suspended VM", err, out)
	}

	// 3. Past the limit the agent destroys it.
	if wait := time.Until(rec.Since.Add(limit)); wait > 0 {
		time.Sleep(wait)
	}
	checkDestroyed(t, f, rec)
	if tether > 0 {
		reap(t, tether)
	}
	second.Process.Signal(syscall.SIGTERM)
	if err := second.Wait(); err != nil {
		t.Errorf("second agent after SIGTERM: %v", err)
	}
	stopped = true
	if n := len(mb.All()); n != 1 {
		t.Errorf("%d mails, want exactly one: %+v", n, mb.All())
	}
	if !strings.Contains(f.log.String(), "suspended VM found") {
		t.Errorf("the second agent did not say it found the suspended VM")
	}
}

// parentOf returns the parent of process pid (0 if unknown).
func parentOf(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// reap waits for our orphaned child pid (a tether) to exit.
func reap(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		if got == pid || errors.Is(err, syscall.ECHILD) {
			return
		}
	}
	t.Errorf("tether %d did not exit after its QEMU", pid)
}

// TestNotifyCrash: what a supervisor calls when it restarts a crashed
// agent reaches the admin, saying which instance, why and its log's end.
func TestNotifyCrash(t *testing.T) {
	mb, relay := notifytest.Start(t)
	m, err := notify.New(notify.Config{Relay: relay, To: "admin@example.org", Host: "build7"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	o := DefaultOptions()
	o.Instance = 3
	NotifyCrash(m, o, errors.New("exit status 2"), "panic: something broke\n")
	mb.Wait(t, 10*time.Second, "the crash mail")
	cancel()
	<-done
	body, _ := io.ReadAll(quotedprintable.NewReader(strings.NewReader(mb.All()[0].Data)))
	for _, want := range []string{notify.AgentCrashed, "build7", "agent default instance 3 ended: exit status 2", "panic: something broke", "buildfarm vm list"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("crash mail lacks %q:\n%s", want, body)
		}
	}
}
