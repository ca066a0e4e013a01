package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/buildfarm/buildfarm/internal/manifest"
)

// TestWaitExitCodes: 0 when every task succeeded, 1 when one did not, 2
// on timeout and on a bad command line.
func TestWaitExitCodes(t *testing.T) {
	dir := t.TempDir()
	bt := filepath.Join(dir, "buildtab")
	os.WriteFile(bt, []byte(cliBuildtab), 0o644)
	url, _ := startController(t, filepath.Join(dir, "db"), "--buildtab", bt)
	tmpl := filepath.Join("..", "..", "examples", "hello", "task.manifest")
	src := filepath.Join("..", "..", "examples", "hello")
	submit := func() string {
		out, errOut, code := runCmd(t, "submit", "--controller", url, "--template", tmpl, "--dir", src)
		if code != 0 {
			t.Fatalf("submit: %d %s", code, errOut)
		}
		id, _, _ := strings.Cut(out, "\n")
		return id
	}

	ok := submit()
	if !agentDo(t, url, manifest.StatusSuccess) {
		t.Fatal("no task for the agent")
	}
	out, errOut, code := runCmd(t, "wait", "--controller", url, "--poll", "50ms", ok)
	if code != 0 || !strings.Contains(out, "success") {
		t.Errorf("wait for a success = %d %q %s, want 0 and the status", code, out, errOut)
	}

	bad := submit()
	agentDo(t, url, manifest.StatusError)
	out, _, code = runCmd(t, "wait", "--controller", url, "--poll", "50ms", bad)
	if code != 1 || !strings.Contains(out, "error") {
		t.Errorf("wait for an error = %d %q, want 1 and the status", code, out)
	}

	pending := submit()
	out, errOut, code = runCmd(t, "wait", "--controller", url, "--poll", "50ms", "--timeout", "300ms", pending)
	if code != 2 || !strings.Contains(errOut, "not done after 300ms") || !strings.Contains(out, "queued") {
		t.Errorf("wait past its timeout = %d %q %q, want 2, the tasks and a message", code, out, errOut)
	}

	for _, args := range [][]string{
		{"wait", "--controller", url},
		{"wait", "--controller", url, "x"},
		{"wait", pending},
		{"wait", "--controller", url, "--frobnicate", pending},
	} {
		if _, errOut, code := runCmd(t, args...); code != 2 || errOut == "" {
			t.Errorf("%v = %d %q, want 2 with a message", args, code, errOut)
		}
	}
	if _, errOut, code := runCmd(t, "wait", "--controller", url, "12345"); code != 1 || !strings.Contains(errOut, "404") {
		t.Errorf("wait for a missing submission = %d %q, want 1 saying 404", code, errOut)
	}
}
