// Package accel decides which accelerator QEMU should use on this host.
// "auto" means KVM only when a guest really runs under it: /dev/kvm may
// exist while a guest hangs under it (on the machines this project is
// built on the CPU exposes no vmx), so the probe is a bounded test boot of
// the cached guest kernel with no root file system and panic=-1: under a
// working KVM it panics at once ("VFS: Unable to mount root") and QEMU
// exits; otherwise the boot stalls past the deadline and the verdict is
// TCG. The verdict is cached per host in the cache directory (see package
// cache) and probed again when the host kernel (uname -r) or the QEMU
// binary (path, size, mtime) changes.
//
// KVM runs only guests of the host's architecture: for a guest of another
// (an aarch64 guest on an x86_64 host) the verdict is TCG without a probe.
//
// External tools: qemu-system-ARCH for the host's architecture (run by
// package qemu).
package accel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/cache"
	"github.com/buildfarm/buildfarm/internal/qemu"
)

// Auto is the accelerator setting that asks for a probe.
const Auto = "auto"

// DefaultTimeout bounds the test boot. A working KVM gets the cloud kernel
// to its panic in well under a second.
const DefaultTimeout = 4 * time.Second

// CacheName is the verdict's file in the cache directory.
const CacheName = "accel.json"

// Host identifies what a verdict depends on.
type Host struct {
	Hostname   string    `json:"hostname"`
	Kernel     string    `json:"kernel"` // uname -r
	QEMU       string    `json:"qemu"`   // the binary's path
	QEMUSize   int64     `json:"qemu_size"`
	QEMUModify time.Time `json:"qemu_mtime"`
}

func (h Host) same(o Host) bool {
	return h.Hostname == o.Hostname && h.Kernel == o.Kernel && h.QEMU == o.QEMU &&
		h.QEMUSize == o.QEMUSize && h.QEMUModify.Equal(o.QEMUModify)
}

// Verdict is the probe's answer.
type Verdict struct {
	Accel  string        `json:"accel"`  // qemu.KVM or qemu.TCG
	Reason string        `json:"reason"` // why, for doctor and the log
	Host   Host          `json:"host"`
	Probed time.Time     `json:"probed"`
	Took   time.Duration `json:"took"`
	Cached bool          `json:"-"` // read from the cache, not probed now
}

// Prober runs and caches the probe. The zero value uses the defaults.
type Prober struct {
	// Arch is the guest architecture asked about; default the host's. For
	// another one the verdict is TCG, without a probe.
	Arch     arch.Arch
	Binary   string        // default qemu-system-ARCH (the host's) from $PATH
	Kernel   string        // default the cached guest kernel of the host's architecture
	CacheDir string        // default cache.Dir()
	Timeout  time.Duration // default DefaultTimeout
	Log      *slog.Logger

	try string // the accelerator to test, KVM but for tests of the probe itself
}

func (p *Prober) log() *slog.Logger {
	if p.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return p.Log
}

// host describes this host and QEMU binary.
func (p *Prober) host() (Host, error) {
	bin := p.Binary
	if bin == "" {
		bin = "qemu-system-" + string(hostArch())
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return Host{}, fmt.Errorf("accel: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return Host{}, fmt.Errorf("accel: %w", err)
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return Host{}, fmt.Errorf("accel: uname: %w", err)
	}
	name, _ := os.Hostname()
	return Host{Hostname: name, Kernel: unix.ByteSliceToString(u.Release[:]), QEMU: path,
		QEMUSize: fi.Size(), QEMUModify: fi.ModTime().UTC()}, nil
}

// loggedFallback makes Resolve say once per process that it fell back.
var loggedFallback sync.Once

// Resolve turns an accelerator setting (auto, kvm or tcg) into kvm or tcg,
// probing (or reading the cached verdict) for auto. For a guest of another
// architecture than the host's it is tcg, whatever the setting.
func (p *Prober) Resolve(ctx context.Context, setting string) (string, error) {
	switch setting {
	case qemu.KVM, qemu.TCG:
		return For(setting, p.Arch), nil
	case Auto, "":
	default:
		return "", fmt.Errorf("accel: %q, want auto, kvm or tcg", setting)
	}
	v, err := p.Verdict(ctx)
	if err != nil {
		return "", err
	}
	if v.Accel == qemu.TCG {
		loggedFallback.Do(func() { p.log().Info("not using KVM, guests run under TCG", "reason", v.Reason) })
	}
	return v.Accel, nil
}

// hostArch is this host's architecture, x86_64 for hosts of another.
func hostArch() arch.Arch {
	if h := arch.Host(); h != "" {
		return h
	}
	return arch.X8664
}

// foreign returns the verdict for a guest of another architecture than the
// host's, and whether p asks about one.
func (p *Prober) foreign() (Verdict, bool) {
	if p.Arch == "" || p.Arch == arch.Host() {
		return Verdict{}, false
	}
	return Verdict{Accel: qemu.TCG, Probed: time.Now().UTC(),
		Reason: fmt.Sprintf("%s guests run under TCG on this %s host: KVM runs only guests of the host's architecture", p.Arch, hostArch())}, true
}

// For returns the accelerator for a guest of architecture guest, given the
// one resolved for the host's own guests (Resolve with no Arch): that one
// for a guest of the host's architecture, TCG for any other.
func For(hostAccel string, guest arch.Arch) string {
	if guest != "" && guest != arch.Host() {
		return qemu.TCG
	}
	return hostAccel
}

// Verdict returns the cached verdict if it is still valid for this host,
// and probes (and caches the answer) otherwise.
func (p *Prober) Verdict(ctx context.Context) (Verdict, error) {
	if v, ok := p.foreign(); ok {
		return v, nil
	}
	h, err := p.host()
	if err != nil {
		return Verdict{}, err
	}
	file := filepath.Join(p.cacheDir(), CacheName)
	if b, err := os.ReadFile(file); err == nil {
		var v Verdict
		if json.Unmarshal(b, &v) == nil && v.Host.same(h) && (v.Accel == qemu.KVM || v.Accel == qemu.TCG) {
			v.Cached = true
			return v, nil
		}
		p.log().Debug("accelerator verdict out of date: probing again", "file", file)
	}
	v, err := p.probe(ctx, h)
	if err != nil {
		return Verdict{}, err
	}
	if err := p.save(file, v); err != nil {
		p.log().Warn("cannot cache the accelerator verdict", "err", err)
	}
	return v, nil
}

func (p *Prober) cacheDir() string {
	if p.CacheDir != "" {
		return p.CacheDir
	}
	return cache.Dir()
}

func (p *Prober) save(file string, v Verdict) error {
	b, err := json.MarshalIndent(v, "", "\t")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return err
	}
	// A temporary file of its own: agents of one host may probe at once.
	f, err := os.CreateTemp(filepath.Dir(file), CacheName+".*")
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), file)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// Probe tests KVM now, without the cache.
func (p *Prober) Probe(ctx context.Context) (Verdict, error) {
	if v, ok := p.foreign(); ok {
		return v, nil
	}
	h, err := p.host()
	if err != nil {
		return Verdict{}, err
	}
	return p.probe(ctx, h)
}

// Signs of a kernel that ran to the point of looking for its root.
var panicked = []string{"VFS: Unable to mount root", "Kernel panic"}

func (p *Prober) probe(ctx context.Context, h Host) (Verdict, error) {
	t0 := time.Now()
	v := Verdict{Accel: qemu.TCG, Host: h, Probed: t0.UTC()}
	done := func(reason string) (Verdict, error) {
		v.Reason, v.Took = reason, time.Since(t0)
		p.log().Debug("accelerator probed", "accel", v.Accel, "reason", reason, "took", v.Took)
		return v, nil
	}
	try := p.try
	if try == "" {
		try = qemu.KVM
		f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
		if err != nil {
			return done(fmt.Sprintf("/dev/kvm unusable: %v", err))
		}
		f.Close()
	}
	kernel := p.Kernel
	if kernel == "" {
		k, err := cache.GuestKernelFor(hostArch())
		if err != nil {
			return Verdict{}, fmt.Errorf("accel: a test boot needs a guest kernel: %w", err)
		}
		kernel = k.Image
	}
	timeout := p.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	dir, err := os.MkdirTemp("", "buildfarm-accel-")
	if err != nil {
		return Verdict{}, fmt.Errorf("accel: %w", err)
	}
	defer os.RemoveAll(dir)
	console := "ttyS0"
	if hostArch() == arch.AArch64 {
		console = "ttyAMA0"
	}
	vm, err := qemu.New(qemu.Config{
		Name: "accel-probe", Arch: hostArch(), Binary: h.QEMU, Accel: try, MemoryMB: 128,
		Kernel: kernel, Append: "console=" + console + " quiet panic=-1 no_timer_check", NoReboot: true,
		Net: qemu.Net{Mode: qemu.NetNone},
	}, filepath.Join(dir, "vm"), p.Log)
	if err != nil {
		return Verdict{}, fmt.Errorf("accel: %w", err)
	}
	bctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := vm.Start(bctx); err != nil {
		if ctx.Err() != nil {
			return Verdict{}, fmt.Errorf("accel: %w", ctx.Err())
		}
		var qe *qemu.Error
		if errors.As(err, &qe) {
			// One line, for doctor's and the log's: QEMU may say it in several.
			return done("QEMU cannot start under KVM: " + strings.Join(strings.Fields(strings.ReplaceAll(strings.TrimSpace(qe.Output), "\n", "; ")), " "))
		}
		return done("QEMU cannot start under KVM: " + err.Error())
	}
	defer vm.Forcedown(context.WithoutCancel(ctx))
	_, err = vm.WaitConsole(bctx, "the kernel's panic", func(line string) bool {
		for _, s := range panicked {
			if strings.Contains(line, s) {
				return true
			}
		}
		return false
	})
	switch {
	case err == nil:
		v.Accel = try
		return done("a test boot under KVM ran to its kernel panic")
	case ctx.Err() != nil:
		return Verdict{}, fmt.Errorf("accel: %w", ctx.Err())
	case bctx.Err() != nil:
		return done(fmt.Sprintf("a test boot under KVM stalled: no kernel panic within %v", timeout))
	default:
		return done("a test boot under KVM failed: " + firstLine(err.Error()))
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
