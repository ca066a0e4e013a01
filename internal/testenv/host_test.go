package testenv

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

func TestLoadAverage(t *testing.T) {
	if got := LoadAverage(); !regexp.MustCompile(`^[0-9.]+ [0-9.]+ [0-9.]+$`).MatchString(got) {
		t.Errorf("LoadAverage() = %q, want three decimal figures", got)
	}
}

func TestHostKernel(t *testing.T) {
	if got := HostKernel(); !regexp.MustCompile(`^[0-9]+\.[0-9]+`).MatchString(got) {
		t.Errorf("HostKernel() = %q, want a release such as 6.1.0-57-cloud-amd64", got)
	}
}

func TestCommit(t *testing.T) {
	NeedProgram(t, "git")
	got, err := Commit(t.Context())
	if err != nil {
		t.Skipf("not in a git checkout: %v", err)
	}
	if !regexp.MustCompile(`^[0-9a-f]{7,}$`).MatchString(got) {
		t.Errorf("Commit() = %q, want an abbreviated hash", got)
	}
}

func TestQEMUVersion(t *testing.T) {
	NeedProgram(t, "qemu-system-x86_64")
	if got := QEMUVersion(t.Context(), "qemu-system-x86_64"); !regexp.MustCompile(`^QEMU emulator version [0-9]`).MatchString(got) {
		t.Errorf("QEMUVersion() = %q, want QEMU's first line", got)
	}
	if got := QEMUVersion(t.Context(), "/nonexistent/qemu"); got != "" {
		t.Errorf("QEMUVersion of a missing program = %q, want empty", got)
	}
}

func TestWriteResults(t *testing.T) {
	file := filepath.Join(t.TempDir(), "results.json")
	if err := WriteResults(file, map[string]float64{"ratio": 1.5}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if want := "{\n  \"ratio\": 1.5\n}\n"; string(b) != want {
		t.Errorf("results.json = %q, want %q", b, want)
	}
	if err := WriteResults(filepath.Join(t.TempDir(), "no", "such", "dir", "r.json"), 1); err == nil {
		t.Error("WriteResults into a missing directory = nil, want an error")
	}
}
