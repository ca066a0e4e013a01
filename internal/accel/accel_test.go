package accel

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/qemu"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

func prober(t *testing.T) *Prober {
	t.Helper()
	testenv.NeedVM(t)
	testenv.NeedProgram(t, "qemu-system-x86_64")
	k := testenv.NeedKernel(t)
	return &Prober{Kernel: k.Image, CacheDir: t.TempDir(), Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))}
}

// The probe's test boot recognises a guest that runs: under TCG, slow as
// it is, the kernel reaches its panic.
func TestProbeSeesARunningGuest(t *testing.T) {
	p := prober(t)
	p.try = qemu.TCG
	p.Timeout = 60 * time.Second
	v, err := p.Probe(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if v.Accel != qemu.TCG || !strings.Contains(v.Reason, "panic") {
		t.Errorf("Probe() under TCG = %+v, want tcg, having seen the panic", v)
	}
}

// Here KVM exists but guests hang under it: auto settles on TCG, fast.
func TestAutoHere(t *testing.T) {
	p := prober(t)
	t0 := time.Now()
	got, err := p.Resolve(t.Context(), Auto)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	v, err := p.Verdict(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Resolve(auto) = %s in %v: %s", got, took, v.Reason)
	if got != v.Accel || !v.Cached {
		t.Errorf("Verdict() after Resolve = %+v, want the cached %s", v, got)
	}
	if took > DefaultTimeout+3*time.Second {
		t.Errorf("Resolve(auto) took %v, want at most the probe's bound %v and start-up", took, DefaultTimeout)
	}
	if got == qemu.KVM {
		// Then a guest must really run under it.
		p.try, p.Timeout = qemu.KVM, 10*time.Second
		if v, err := p.Probe(t.Context()); err != nil || v.Accel != qemu.KVM {
			t.Errorf("KVM chosen but a second test boot says %+v, %v", v, err)
		}
	}
	for _, s := range []string{qemu.KVM, qemu.TCG} {
		if got, err := p.Resolve(t.Context(), s); got != s || err != nil {
			t.Errorf("Resolve(%s) = %s, %v, want %s", s, got, err, s)
		}
	}
	if _, err := p.Resolve(t.Context(), "hvf"); err == nil {
		t.Errorf("Resolve(hvf) = nil error, want one")
	}
}

func TestCacheInvalidation(t *testing.T) {
	p := prober(t)
	p.Timeout = time.Second
	h, err := p.host()
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(p.CacheDir, CacheName)
	write := func(v Verdict) {
		b, _ := json.Marshal(v)
		if err := os.WriteFile(file, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A verdict for this very host is used as it is, even one no probe here
	// would give.
	write(Verdict{Accel: "kvm", Reason: "planted", Host: h})
	v, err := p.Verdict(context.Background())
	if err != nil || !v.Cached || v.Reason != "planted" {
		t.Errorf("Verdict() with a valid cache = %+v, %v, want the planted one", v, err)
	}
	// Another kernel, or another QEMU, and it probes again.
	for name, edit := range map[string]func(*Host){
		"kernel": func(h *Host) { h.Kernel = "0.0.1-other" },
		"qemu":   func(h *Host) { h.QEMUModify = h.QEMUModify.Add(-time.Hour) },
	} {
		other := h
		edit(&other)
		write(Verdict{Accel: "kvm", Reason: "planted", Host: other})
		v, err := p.Verdict(context.Background())
		if err != nil || v.Cached || v.Reason == "planted" {
			t.Errorf("Verdict() with a cache for another %s = %+v, %v, want a fresh probe", name, v, err)
		}
		b, _ := os.ReadFile(file)
		var saved Verdict
		if json.Unmarshal(b, &saved) != nil || !saved.Host.same(h) {
			t.Errorf("cache after probing for another %s holds %s, want this host's verdict", name, b)
		}
	}
}

// A guest of another architecture than the host's runs under TCG, whatever
// was asked, and no test boot is made for it (the binary and kernel given
// do not exist).
func TestForeignGuestIsTCG(t *testing.T) {
	other := arch.AArch64
	if arch.Host() == arch.AArch64 {
		other = arch.X8664
	}
	p := &Prober{Arch: other, Binary: "/nonexistent/qemu", Kernel: "/nonexistent/kernel", CacheDir: t.TempDir()}
	for _, s := range []string{Auto, qemu.KVM, qemu.TCG} {
		if got, err := p.Resolve(t.Context(), s); got != qemu.TCG || err != nil {
			t.Errorf("Resolve(%s) for an %s guest = %s, %v, want tcg", s, other, got, err)
		}
	}
	v, err := p.Verdict(t.Context())
	if err != nil || v.Accel != qemu.TCG || !strings.Contains(v.Reason, string(other)) {
		t.Errorf("Verdict() for an %s guest = %+v, %v, want tcg saying why", other, v, err)
	}
	if ents, _ := os.ReadDir(p.CacheDir); len(ents) != 0 {
		t.Errorf("Verdict() for an %s guest cached %v, want nothing", other, ents)
	}
	for _, tt := range []struct {
		host  string
		guest arch.Arch
		want  string
	}{{qemu.KVM, arch.Host(), qemu.KVM}, {qemu.KVM, "", qemu.KVM}, {qemu.KVM, other, qemu.TCG}, {qemu.TCG, arch.Host(), qemu.TCG}} {
		if got := For(tt.host, tt.guest); got != tt.want {
			t.Errorf("For(%s, %q) = %s, want %s", tt.host, tt.guest, got, tt.want)
		}
	}
}
