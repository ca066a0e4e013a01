package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/buildfarm/buildfarm/internal/machine/machinetest"
	"github.com/buildfarm/buildfarm/internal/manifest"
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
	for _, m := range ms {
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
