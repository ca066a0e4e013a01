package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/buildfarm/buildfarm/internal/agent"
	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/machine/machinetest"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// machine list says each machine's architecture, x86_64 for a manifest
// that does not say.
func TestMachineListArch(t *testing.T) {
	src := t.TempDir()
	machines := filepath.Join(t.TempDir(), "machines")
	machinetest.MakeMachine(t, filepath.Join(src, "a"), "a", "ida", 'a')
	machinetest.MakeMachine(t, filepath.Join(src, "x"), "x", "idx", 'x')
	mf := filepath.Join(src, "a", "manifest")
	b, err := os.ReadFile(mf)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(mf, append(b, "buildfarm-arch: aarch64\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "x"} {
		if out, errOut, code := runManifest(t, "", "machine", "add", "--machines", machines, "--backend", "fallback", "--name", n, filepath.Join(src, n)); code != 0 {
			t.Fatalf("machine add %s: exit %d: %s%s", n, code, out, errOut)
		}
	}
	out, errOut, code := runManifest(t, "", "machine", "list", "--machines", machines)
	if code != 0 {
		t.Fatalf("machine list: exit %d: %s", code, errOut)
	}
	ms, err := manifest.Parse(strings.NewReader(out), "list")
	if err != nil {
		t.Fatalf("machine list printed %q: %v", out, err)
	}
	got := map[string]string{}
	for _, m := range ms.Manifests() {
		h, err := manifest.ParseMachineHeader(m, "list", manifest.Strict)
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = h.Arch
	}
	if got["a"] != "aarch64" || got["x"] != "x86_64" || len(got) != 2 {
		t.Errorf("machine list gave architectures %v, want a: aarch64, x: x86_64\n%s", got, out)
	}
}

// doctor says that aarch64 guests run here under TCG once their QEMU,
// kernel and busybox are in place, and what is missing otherwise.
func TestDoctorArch(t *testing.T) {
	testenv.NeedVM(t)
	testenv.NeedRoot(t)
	testenv.NeedProgram(t, "qemu-system-aarch64")
	k := testenv.NeedKernel(t)
	k64 := testenv.NeedKernelFor(t, arch.AArch64)
	bb := testenv.NeedBusybox(t, arch.AArch64)
	c := t.TempDir()
	for link, target := range map[string]string{"kernel": k.Dir, "kernel-arm64": k64.Dir} {
		if err := os.Symlink(target, filepath.Join(c, link)); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("BUILDFARM_CACHE", c)
	line := func() string {
		t.Helper()
		stdout, stderr, _ := runManifest(t, "", "doctor")
		for _, l := range strings.Split(stdout, "\n") {
			if strings.Contains(l, "aarch64 guests") {
				return l
			}
		}
		t.Fatalf("doctor printed no aarch64 line:\n%s%s", stdout, stderr)
		return ""
	}
	if l := line(); !regexp.MustCompile(`^arch +warn +aarch64 guests cannot run: no busybox in .*busybox-arm64; scripts/deps`).MatchString(l) {
		t.Errorf("doctor without the arm64 busybox: %q, want a warning naming it", l)
	}
	if err := os.Symlink(filepath.Dir(bb), filepath.Join(c, "busybox-arm64")); err != nil {
		t.Fatal(err)
	}
	if l := line(); !regexp.MustCompile(`^arch +ok +aarch64 guests run under tcg .*qemu-system-aarch64, kernel ` + regexp.QuoteMeta(k64.Version)).MatchString(l) {
		t.Errorf("doctor with everything for aarch64: %q, want ok, under tcg", l)
	}
}

// dumpedResult parses the result manifest the agent printed.
func dumpedResult(t *testing.T, out string) *manifest.Result {
	t.Helper()
	ms, err := manifest.Parse(strings.NewReader(out), "result")
	if err != nil || ms.Len() != 1 {
		t.Fatalf("agent printed %q, want one result manifest: %v", out, err)
	}
	r, err := manifest.ParseResult(ms.Manifest(0), "result", manifest.Lenient)
	if err != nil {
		t.Fatalf("agent printed %q: %v", out, err)
	}
	return r
}

// A task for one architecture is never given to a machine of the other:
// the agent refuses it, naming both, and a task whose target matches its
// machine goes ahead (to --fake-build's abort, without a VM).
func TestAgentRefusesOtherArch(t *testing.T) {
	tasks := map[string]string{ // target -> a task for it
		"x86_64":  filepath.Join("..", "..", "examples", "hello", "task.manifest"),
		"aarch64": filepath.Join("..", "..", "examples", "hello-aarch64", "task.manifest"),
	}
	for _, tt := range []struct {
		task, machineArch string
		want              string // in the error result's log; "" for a task that goes ahead
	}{
		{"aarch64", "x86_64", "target aarch64-linux-gnu needs an aarch64 machine"},
		{"x86_64", "aarch64", "target x86_64-linux-gnu needs an x86_64 machine"},
		{"aarch64", "aarch64", ""},
		{"x86_64", "x86_64", ""},
	} {
		t.Run(tt.task+" task on "+tt.machineArch, func(t *testing.T) {
			task, _, err := agent.ReadTaskFile(tasks[tt.task])
			if err != nil {
				t.Fatal(err)
			}
			// The machine the task names, of the architecture under test.
			dir := t.TempDir()
			header := filepath.Join(dir, "machines.manifest")
			h := manifest.MachineHeader{ID: task.Machine + "-1.0", Name: task.Machine, Summary: "a " + tt.machineArch + " machine", Arch: tt.machineArch}
			if err := manifest.WriteFile(header, []manifest.Manifest{h.Manifest()}); err != nil {
				t.Fatal(err)
			}
			out, errOut, code := runManifest(t, "", "agent", "--fake-machine", header, "--fake-build", "--no-netns",
				"--tftp", filepath.Join(dir, "tftp"), "--fake-request", tasks[tt.task], "--dump-result")
			if code != 0 {
				t.Fatalf("agent: exit %d: %s", code, errOut)
			}
			r := dumpedResult(t, out)
			log := ""
			for _, op := range r.Results {
				log += op.Log
			}
			switch {
			case tt.want != "" && (r.Status != manifest.StatusError || !strings.Contains(log, tt.want)):
				t.Errorf("%s task on an %s machine: status %s, log %q; want error, %q", tt.task, tt.machineArch, r.Status, log, tt.want)
			case tt.want == "" && (r.Status != manifest.StatusAbort || !strings.Contains(log, "fake build")):
				t.Errorf("%s task on an %s machine: status %s, log %q; want the fake build's abort", tt.task, tt.machineArch, r.Status, log)
			}
		})
	}
}

// TestBuildHelloAArch64 builds examples/hello-aarch64 on an aarch64 busybox
// machine, under TCG, through the agent's --fake-request path: image build
// --arch aarch64 with the worker cross-compiled, machine add, and the
// agent, which boots qemu-system-aarch64 for the machine's architecture.
// The result carries the guest's uname -m, and says the VM was restored
// from the machine's warm state.
func TestBuildHelloAArch64(t *testing.T) {
	testenv.NeedVM(t)
	testenv.NeedRoot(t)
	testenv.NeedProgram(t, "qemu-system-aarch64")
	testenv.NeedKernelFor(t, arch.AArch64)
	testenv.NeedBusybox(t, arch.AArch64)
	dir := t.TempDir()
	worker := testenv.Worker(t, arch.AArch64)
	m, machines := filepath.Join(dir, "m"), filepath.Join(dir, "machines")
	for _, args := range [][]string{
		{"image", "build", "--preset", "busybox", "--arch", "aarch64", "--name", "busybox-aarch64", "--out", m, "--worker", worker},
		{"machine", "add", "--machines", machines, "--backend", "fallback", "--name", "busybox-aarch64", m},
	} {
		if out, errOut, code := runManifest(t, "", args...); code != 0 {
			t.Fatalf("buildfarm %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
		}
	}
	out, errOut, code := runManifest(t, "", "agent", "--machines", machines, "--tftp", filepath.Join(dir, "tftp"),
		"--registry", testenv.VMRegistry(t), "--accel", "auto", "--ram", "256", "--fake-bootstrap", "--build-startup", "60s", "--build-timeout", "120s",
		"--fake-request", filepath.Join("..", "..", "examples", "hello-aarch64", "task.manifest"), "--dump-result")
	if code != 0 {
		t.Fatalf("agent: exit %d\n%s", code, errOut)
	}
	r := dumpedResult(t, out)
	if r.Status != manifest.StatusSuccess {
		t.Fatalf("hello-aarch64: status %s, want success\nresult:\n%s\nagent log:\n%s", r.Status, out, errOut)
	}
	// The agent's default, --start auto: the task's VM restored from the
	// warm state built after the bootstrap (its memory in a RAM file).
	if r.Start != "warm" || !strings.Contains(errOut, "warm state built") {
		t.Errorf("hello-aarch64's VM started %q, want warm from a state built for it; agent log:\n%s", r.Start, errOut)
	}
	for _, op := range r.Results {
		if op.Operation == "test" {
			if !strings.Contains(op.Log, "uname -m: aarch64") || !strings.Contains(op.Log, "PASS: architecture") {
				t.Errorf("hello-aarch64's test log = %q, want the guest's uname -m, aarch64", op.Log)
			}
			return
		}
	}
	t.Errorf("hello-aarch64's result has no test operation:\n%s", out)
}
