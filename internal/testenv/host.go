package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/buildfarm/buildfarm/internal/proc"
)

// What a bench/ harness writes beside its figures in its results.json, so
// that a run can be told from another: the load on the host, its kernel,
// the QEMU and the commit measured.

// LoadAverage returns the host's load averages over 1, 5 and 15 minutes,
// "0.42 0.29 0.12" ("" when /proc/loadavg cannot be read): other processes
// on the host slow the guests, which run under TCG.
func LoadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return ""
}

// HostKernel returns the host's kernel release ("" when it cannot be read).
func HostKernel() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

// QEMUVersion returns the first line of program's --version
// ("qemu-system-x86_64"), or "" when it does not run.
func QEMUVersion(ctx context.Context, program string) string {
	out, _ := proc.Output(ctx, program, "--version")
	first, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(first)
}

// Commit returns the commit checked out in the working directory's
// repository (HEAD), abbreviated.
func Commit(ctx context.Context) (string, error) {
	out, err := proc.Output(ctx, "git", "rev-parse", "--short", "HEAD")
	if err != nil {
		return "", fmt.Errorf("the commit: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// WriteResults writes v, indented JSON with a final newline, to file: a
// bench/ harness's results.json.
func WriteResults(file string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("results %s: %w", file, err)
	}
	if err := os.WriteFile(file, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("results: %w", err)
	}
	return nil
}
