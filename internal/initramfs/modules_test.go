package initramfs

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/buildfarm/buildfarm/internal/testenv"
)

func names(mods []Module) []string {
	var out []string
	for _, m := range mods {
		out = append(out, m.Name)
	}
	return out
}

// TestClosureRealKernel resolves against the cached guest kernel, both from
// depmod's modules.dep and from the modules' own .modinfo sections.
func TestClosureRealKernel(t *testing.T) {
	k := testenv.NeedKernel(t)
	fromDep, err := LoadModules(k.Modules)
	if err != nil {
		t.Fatal(err)
	}
	fromInfo, err := loadModinfo(k.Modules)
	if err != nil {
		t.Fatal(err)
	}
	fromInfo.builtin = fromDep.builtin
	for _, tc := range []struct {
		request []string
		want    []string
	}{
		{[]string{"virtio_net"}, []string{"failover", "net_failover", "virtio_ring", "virtio", "virtio_net"}},
		{[]string{"virtio-pci"}, []string{"virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci"}},
		// What the guest images load: the PCI transport first, so the
		// devices are there when their drivers come; ext4 is built in.
		{[]string{"virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "ext4"}, []string{
			"virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
			"virtio_blk", "failover", "net_failover", "virtio_net", "virtio_console"}},
	} {
		t.Run(strings.Join(tc.request, ","), func(t *testing.T) {
			for _, idx := range []struct {
				name string
				m    *Modules
			}{{"modules.dep", fromDep}, {".modinfo", fromInfo}} {
				mods, err := idx.m.Closure(tc.request...)
				if err != nil {
					t.Fatalf("%s: %v", idx.name, err)
				}
				if diff := cmp.Diff(tc.want, names(mods)); diff != "" {
					t.Errorf("%s: Closure(%q) (-want +got):\n%s", idx.name, tc.request, diff)
				}
				loaded := map[string]bool{}
				for _, m := range mods {
					for _, d := range m.Depends {
						if !loaded[d] {
							t.Errorf("%s: %s comes before its dependency %s", idx.name, m.Name, d)
						}
					}
					loaded[m.Name] = true
					if _, err := os.Stat(filepath.Join(k.Modules, m.Path)); err != nil {
						t.Errorf("%s: %s: %v", idx.name, m.Name, err)
					}
				}
			}
		})
	}
	if !fromDep.Builtin("ext4") {
		t.Error("Builtin(ext4) = false; the cloud kernel builds ext4 in")
	}
	if _, err := fromDep.Closure("no_such_module"); !errors.Is(err, ErrUnknownModule) {
		t.Errorf("Closure(no_such_module) = %v, want ErrUnknownModule", err)
	}
}

// TestClosureErrors uses a made-up modules.dep.
func TestClosureErrors(t *testing.T) {
	dir := t.TempDir()
	dep := "kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/c.ko\nkernel/c.ko: kernel/a.ko\nkernel/d.ko: kernel/gone.ko\n"
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := LoadModules(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, want string }{
		{"a", "cycle: a -> b -> c -> a"},
		{"d", "gone (needed by d)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := m.Closure(tc.name); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Closure(%s) = %v, want an error saying %q", tc.name, err, tc.want)
			}
		})
	}
}
