package arch

import (
	"runtime"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want Arch
	}{
		{"x86_64", X8664}, {"amd64", X8664}, {"x64", X8664},
		{"aarch64", AArch64}, {"arm64", AArch64},
		{"", ""}, {"riscv64", ""}, {"AARCH64", ""},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		if got != tt.want || (err != nil) != (tt.want == "") {
			t.Errorf("Parse(%q) = %q, %v, want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestNames(t *testing.T) {
	for a, want := range map[Arch]string{X8664: "amd64", AArch64: "arm64"} {
		if a.Debian() != want || a.GOARCH() != want {
			t.Errorf("%s: Debian() = %q, GOARCH() = %q, want %q", a, a.Debian(), a.GOARCH(), want)
		}
	}
	if h := Host(); h.GOARCH() != runtime.GOARCH && h != "" {
		t.Errorf("Host() = %q, whose GOARCH %q is not runtime's %q", h, h.GOARCH(), runtime.GOARCH)
	}
}

// A task for one architecture is never given to a machine of the other.
func TestCheck(t *testing.T) {
	tests := []struct {
		target  string
		machine Arch
		err     string // "" for none
	}{
		{"x86_64-linux-gnu", X8664, ""},
		{"i686-linux-gnu", X8664, ""},
		{"aarch64-linux-gnu", AArch64, ""},
		{"arm64-apple-darwin", AArch64, ""},
		{"", AArch64, ""},
		{"aarch64-linux-gnu", X8664, "target aarch64-linux-gnu needs an aarch64 machine, and this machine is x86_64"},
		{"x86_64-linux-gnu", AArch64, "target x86_64-linux-gnu needs an x86_64 machine, and this machine is aarch64"},
		{"i686-linux-gnu", AArch64, "needs an x86_64 machine"},
		{"riscv64-linux-gnu", X8664, `CPU "riscv64" is none`},
		{"riscv64-linux-gnu", AArch64, `CPU "riscv64" is none`},
	}
	for _, tt := range tests {
		err := Check(tt.target, tt.machine)
		if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("Check(%q, %s) = %v, want %q", tt.target, tt.machine, err, tt.err)
		}
	}
}

// FuzzFromTarget: any target either names one of the architectures, which
// Check then accepts for it and refuses for the other, or is an error
// naming the target.
func FuzzFromTarget(f *testing.F) {
	for _, s := range []string{"x86_64-linux-gnu", "aarch64-linux-gnu", "i686-w64-mingw32", "", "-", "arm64"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		a, err := FromTarget(target)
		if err != nil {
			if !strings.Contains(err.Error(), "target") {
				t.Errorf("FromTarget(%q) error %q does not say which target", target, err)
			}
			return
		}
		for _, m := range All {
			if cerr := Check(target, m); (cerr == nil) != (m == a) {
				t.Errorf("FromTarget(%q) = %s, but Check(%q, %s) = %v", target, a, target, m, cerr)
			}
		}
	})
}
