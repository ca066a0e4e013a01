package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/testenv"
)

// TestUp runs the main job as the README's first command does: one build of
// examples/hello in a real VM, from nothing, then again on the machine it
// left bootstrapped.
func TestUp(t *testing.T) {
	testenv.NeedVM(t)
	testenv.NeedRoot(t)
	testenv.NeedKernel(t)
	worker := filepath.Join(t.TempDir(), "buildfarm-worker")
	build := exec.Command("go", "build", "-o", worker, "../buildfarm-worker")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build worker: %v\n%s", err, out)
	}
	state := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for i, task := range []string{"hello", "hello-broken"} {
		var stdout, stderr bytes.Buffer
		err := run(ctx, []string{"up", "--state", state, "--worker", worker,
			"--task", filepath.Join("..", "..", "examples", task, "task.manifest")}, nil, &stdout, &stderr)
		wantErr := task == "hello-broken"
		if (err != nil) != wantErr || exitCode(err) != map[bool]int{false: 0, true: 1}[wantErr] {
			t.Fatalf("up %s = %v (exit %d)\n%s", task, err, exitCode(err), stderr.String())
		}
		status := map[bool]string{false: "status: success", true: "status: error"}[wantErr]
		if !strings.Contains(stdout.String(), status) {
			t.Errorf("up %s printed\n%s\nwant %q", task, stdout.String(), status)
		}
		made := strings.Contains(stderr.String(), "making the busybox machine")
		if made != (i == 0) {
			t.Errorf("up run %d: made the machine: %v, want %v", i+1, made, i == 0)
		}
	}
}
