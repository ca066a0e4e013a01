package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
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

// Worker builds buildfarm-worker for guests of architecture a into a
// temporary directory of t and returns its path; a failed build fails t.
// (Go's build cache makes a build after the first one a link, about a
// second.)
func Worker(t testing.TB, a arch.Arch) string {
	t.Helper()
	NeedProgram(t, "go")
	p := filepath.Join(t.TempDir(), "buildfarm-worker-"+a.GOARCH())
	if err := BuildWorker(t.Context(), p, a); err != nil {
		t.Fatal(err)
	}
	return p
}
