package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/proc"
)

// module is buildfarm's module path: packages are built by import path, so
// a build works from any directory inside the module (a test's package
// directory, or the module root for bench/).
const module = "github.com/buildfarm/buildfarm"

// GoBuild builds the module's package pkg ("./cmd/buildfarm", relative to
// the module root) into out, statically (CGO_ENABLED=0), for goarch (""
// for the host's), with -ldflags ldflags when not empty.
func GoBuild(ctx context.Context, out, pkg, goarch string, ldflags ...string) error {
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	args := []string{"build", "-o", out}
	if len(ldflags) > 0 {
		args = append(args, "-ldflags", strings.Join(ldflags, " "))
	}
	args = append(args, module+"/"+strings.TrimPrefix(pkg, "./"))
	cmd := proc.Command(ctx, gobin, args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if goarch != "" {
		cmd.Env = append(cmd.Env, "GOARCH="+goarch)
	}
	if err := proc.Wait(cmd); err != nil {
		return fmt.Errorf("go build %s (GOARCH %q): %w", pkg, goarch, err)
	}
	return nil
}

// BuildWorker builds buildfarm-worker, static, for guests of architecture
// a into out.
func BuildWorker(ctx context.Context, out string, a arch.Arch, ldflags ...string) error {
	return GoBuild(ctx, out, "./cmd/buildfarm-worker", a.GOARCH(), ldflags...)
}

// workers holds the workers built by Worker, one per architecture, for
// the life of the test binary (go test removes nothing of a test binary's
// own temporary files; each lives in a directory of its own under
// os.TempDir, removed by RemoveWorkers).
var workers struct {
	sync.Mutex
	dir  string
	path map[arch.Arch]string
}

// Worker returns buildfarm-worker built for guests of architecture a,
// built once per test binary; a failed build fails t. Call RemoveWorkers
// from TestMain to remove them at the end (or let the OS's temporary
// directory clean-up do it).
func Worker(t testing.TB, a arch.Arch) string {
	t.Helper()
	NeedProgram(t, "go")
	workers.Lock()
	defer workers.Unlock()
	if p, ok := workers.path[a]; ok {
		return p
	}
	if workers.dir == "" {
		dir, err := os.MkdirTemp("", "buildfarm-test-worker-")
		if err != nil {
			t.Fatal(err)
		}
		workers.dir, workers.path = dir, map[arch.Arch]string{}
	}
	p := filepath.Join(workers.dir, "buildfarm-worker-"+a.GOARCH())
	if err := BuildWorker(context.Background(), p, a); err != nil {
		t.Fatal(err)
	}
	workers.path[a] = p
	return p
}

// RemoveWorkers removes what Worker built; TestMain calls it after m.Run.
func RemoveWorkers() {
	workers.Lock()
	defer workers.Unlock()
	if workers.dir != "" {
		os.RemoveAll(workers.dir)
		workers.dir, workers.path = "", nil
	}
}
