package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/buildfarm/buildfarm/internal/machine"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/netns"
	"github.com/buildfarm/buildfarm/internal/notify"
	"github.com/buildfarm/buildfarm/internal/worker"
)

// machineState is a machine the agent can run tasks in.
type machineState struct {
	name    string
	volume  *machine.Volume
	machine *manifest.Machine
	mac     string
	fake    bool // from --fake-machine: no disk, nothing to snapshot
}

// snapshot is a task's copy of a bootstrapped machine.
type snapshot struct {
	dir     string
	delete  func(context.Context) error
	release func() // leaves it to a suspended VM as the agent exits (optional)
}

// want is what this agent expects of a bootstrapped machine: its toolchain
// id and the worker's protocol version.
func (a *Agent) want() machine.Want {
	id := a.opts.ToolchainID
	if id == "" {
		id = a.toolchainID()
	}
	return machine.Want{ToolchainID: id, Versions: map[string]uint64{worker.VersionTool: worker.Version}}
}

// toolchainID is the toolchain's id when none is given: a hash of the
// toolchain name, version and files, so a changed toolchain re-bootstraps.
func (a *Agent) toolchainID() string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n", a.opts.toolchain(), a.opts.ToolchainVersion)
	if files, err := a.toolchainFiles(); err == nil {
		for _, f := range files {
			fmt.Fprintf(h, "%s %s\n", f.Name, f.SHA256)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// toolchainFiles lists the files of --toolchain with their sums.
func (a *Agent) toolchainFiles() ([]worker.ToolchainFileEntry, error) {
	if a.opts.Toolchain == "" {
		return nil, nil
	}
	des, err := os.ReadDir(a.opts.Toolchain)
	if err != nil {
		return nil, fmt.Errorf("toolchain %s: %w", a.opts.Toolchain, err)
	}
	var files []worker.ToolchainFileEntry
	for _, de := range des {
		if !de.Type().IsRegular() {
			continue
		}
		f, err := os.Open(filepath.Join(a.opts.Toolchain, de.Name()))
		if err != nil {
			return nil, err
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("toolchain %s: %w", de.Name(), err)
		}
		files = append(files, worker.ToolchainFileEntry{Name: de.Name(), SHA256: hex.EncodeToString(h.Sum(nil))})
	}
	return files, nil
}

func (a *Agent) store() *machine.Store {
	return &machine.Store{Dir: a.opts.Machines, Log: a.log}
}

// cleanup removes what a crashed agent left behind: per-task snapshots and
// unfinished bootstraps, network namespaces, and this instance's TFTP
// directories, but not those of suspended VMs that still run (see
// adoptSuspended).
func (a *Agent) cleanup(ctx context.Context) error {
	if a.opts.FakeMachine == "" {
		if _, err := os.Stat(a.opts.Machines); err != nil {
			return fmt.Errorf("--machines %s: %w", a.opts.Machines, err)
		}
	}
	spare := a.adoptSuspended(ctx)
	keepSnaps, keepNS := a.liveFiles()
	if a.opts.FakeMachine == "" {
		gone, err := a.store().CleanStray(ctx, keepSnaps...)
		if err != nil {
			return err
		}
		for _, d := range gone {
			a.log.Info("removed a stray snapshot", "dir", d)
		}
	}
	if !a.opts.NoNetNS {
		if _, err := netns.Cleanup(ctx, a.log, keepNS...); err != nil {
			a.log.Warn("cleaning up network namespaces", "err", err)
		}
	}
	a.cleanupTaps(ctx)
	return removeAllBut(a.instanceDir(), spare)
}

// removeAllBut deletes dir, or, when some of spare are in it, everything
// in it but those.
func removeAllBut(dir string, spare []string) error {
	es, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("tftp directory %s: %w", dir, err)
	}
	for _, e := range es {
		p := filepath.Join(dir, e.Name())
		if slices.Contains(spare, p) {
			continue
		}
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("tftp directory %s: %w", dir, err)
		}
	}
	return nil
}

// machines enumerates the machines and bootstraps those that need it, in
// slot's VMs. One enumeration runs at a time in an agent: the slots of
// --instances take turns.
func (a *Agent) machines(ctx context.Context, slot int) ([]*machineState, error) {
	a.enumMu.Lock()
	defer a.enumMu.Unlock()
	if a.opts.FakeMachine != "" {
		ms, err := manifest.ReadFile(a.opts.FakeMachine)
		if err != nil {
			return nil, err
		}
		var out []*machineState
		for _, m := range ms.Manifests() {
			h, err := manifest.ParseMachineHeader(m, a.opts.FakeMachine, manifest.Lenient)
			if err != nil {
				return nil, err
			}
			out = append(out, &machineState{name: h.Name, fake: true,
				machine: &manifest.Machine{ID: h.ID, Name: h.Name, Summary: h.Summary, Arch: h.Arch}})
		}
		return out, nil
	}
	tc := a.opts.toolchain()
	cs, err := a.store().Enumerate(ctx, tc, a.want())
	if err != nil {
		return nil, err
	}
	var out []*machineState
	for i, c := range cs {
		if c.Decision.Action != machine.ActionIgnore && c.Machine.Name != c.Name {
			// The name offered to controllers is the manifest's; it must
			// be the one the task names, the snapshot is made of, and
			// `machine list` prints (machine add refuses others).
			a.log.Error("machine skipped: its manifest names another machine; add it under its manifest's name",
				"machine", c.Name, "manifest-name", c.Machine.Name)
			a.notifyOnce(notify.Event{Kind: notify.MachineSkipped, Machine: c.Name,
				Why:  fmt.Sprintf("its manifest names another machine, %q: add it under its manifest's name", c.Machine.Name),
				Look: []string{"buildfarm machine list"}})
			if c.Bootstrap != nil {
				c.Bootstrap.Abort(context.WithoutCancel(ctx))
			}
			continue
		}
		switch c.Decision.Action {
		case machine.ActionIgnore:
			if c.Decision.Reason != machine.ReasonLocked {
				a.notifyOnce(notify.Event{Kind: notify.MachineSkipped, Machine: c.Name, Why: c.Decision.Reason,
					Look: []string{"buildfarm machine list"}})
			}
			continue
		case machine.ActionBootstrap:
			a.dropWarm(ctx, c.Volume, c.Name, "bootstrapping again: "+c.Decision.Reason)
			if err := a.bootstrap(ctx, slot, c); err != nil {
				if ctx.Err() != nil {
					abortBootstraps(ctx, cs[i+1:])
					return nil, ctx.Err()
				}
				a.log.Error("machine not bootstrapped; carrying on without it", "machine", c.Name, "err", err)
				a.notifyOnce(notify.Event{Kind: notify.BootstrapFailed, Machine: c.Name, Task: "bootstrap", Why: err.Error(),
					Look: []string{"buildfarm vm list", "buildfarm machine list"}})
				continue
			}
		}
		out = append(out, &machineState{name: c.Name, volume: c.Volume, machine: c.Machine, mac: c.Machine.MAC})
	}
	slices.SortFunc(out, func(x, y *machineState) int { return strings.Compare(x.name, y.name) })
	a.ensureWarm(ctx, slot, out) // warm states after bootstraps, and where missing
	return out, nil
}

// abortBootstraps releases the bootstraps of candidates not handled.
func abortBootstraps(ctx context.Context, cs []*machine.Candidate) {
	for _, c := range cs {
		if c.Bootstrap != nil {
			c.Bootstrap.Abort(context.WithoutCancel(ctx))
		}
	}
}

// bootstrap boots a snapshot of the machine's current revision with the
// worker in bootstrap mode, retrying mis-boots, and commits it as the
// bootstrapped machine when the worker uploaded its bootstrap manifest.
func (a *Agent) bootstrap(ctx context.Context, slot int, c *machine.Candidate) error {
	b := c.Bootstrap
	tc := &manifest.Toolchain{ID: a.want().ToolchainID}
	if a.opts.FakeBootstrap {
		bm := &manifest.BootstrappedMachine{Machine: *c.Machine, Toolchain: *tc,
			Bootstrap: manifest.Bootstrap{Versions: []manifest.ToolVersion{{Tool: worker.VersionTool, Version: worker.Version}}}}
		return b.Commit(ctx, bm)
	}
	s := a.newSession(slot, b.Dir, worker.ModeBootstrap)
	s.mac = c.Machine.MAC
	s.machine, s.task = c.Name, "bootstrap"
	kept := false // a suspended VM keeps its TFTP directory
	defer func() {
		if !kept {
			os.RemoveAll(s.tftpDir)
		}
	}()
	var r *vmRun
	var err error
	for attempt := 0; attempt <= a.opts.BootstrapRetries; attempt++ {
		if err = s.prepare(); err != nil {
			break
		}
		if err = a.writeToolchain(s.getDir()); err != nil {
			break
		}
		a.log.Info("bootstrapping", "machine", c.Name, "revision", c.Revision.String(), "attempt", attempt+1)
		r, err = a.boot(ctx, s, attempt == a.opts.BootstrapRetries)
		if err == nil || !errors.Is(err, ErrMisboot) || ctx.Err() != nil {
			break
		}
		a.log.Warn("bootstrap VM mis-booted", "machine", c.Name, "attempt", attempt+1, "err", err)
	}
	if err != nil {
		if r != nil {
			kept = true
			a.keepSuspended(r, &snapshot{dir: b.Dir, delete: b.Abort, release: b.Release})
			return fmt.Errorf("bootstrap of %s: %w", c.Name, err)
		}
		b.Abort(context.WithoutCancel(ctx))
		return fmt.Errorf("bootstrap of %s: %w", c.Name, err)
	}
	r.Shutdown(ctx)
	ms, err := resultLimits.ReadFile(filepath.Join(s.putDir(), worker.BootstrapFile))
	var bs *manifest.Bootstrap
	if err == nil && ms.Len() != 1 {
		err = fmt.Errorf("%s: %d manifests, want one", worker.BootstrapFile, ms.Len())
	}
	if err == nil {
		bs, err = manifest.ParseBootstrap(ms.Manifest(0), worker.BootstrapFile, manifest.Lenient)
	}
	if err != nil {
		b.Abort(context.WithoutCancel(ctx))
		return fmt.Errorf("bootstrap of %s: %w", c.Name, err)
	}
	return b.Commit(ctx, &manifest.BootstrappedMachine{Machine: *c.Machine, Toolchain: *tc, Bootstrap: *bs})
}

// writeToolchain places toolchain.manifest and the toolchain's files in dir.
func (a *Agent) writeToolchain(dir string) error {
	files, err := a.toolchainFiles()
	if err != nil {
		return err
	}
	m := manifest.Manifest{{Name: "", Value: "1"}, {Name: "id", Value: a.want().ToolchainID}}
	for _, f := range files {
		m = append(m, manifest.Pair{Name: "file", Value: f.Name + " " + f.SHA256})
		if err := os.Link(filepath.Join(a.opts.Toolchain, f.Name), filepath.Join(dir, f.Name)); err != nil {
			b, rerr := os.ReadFile(filepath.Join(a.opts.Toolchain, f.Name))
			if rerr != nil {
				return rerr
			}
			if err := os.WriteFile(filepath.Join(dir, f.Name), b, 0o644); err != nil {
				return err
			}
		}
	}
	return manifest.WriteFile(filepath.Join(dir, worker.ToolchainFile), []manifest.Manifest{m})
}

// snapshotForTask makes a task's snapshot of the bootstrapped machine.
func (a *Agent) snapshotForTask(ctx context.Context, m *machineState) (*snapshot, error) {
	start := time.Now()
	s, err := m.volume.SnapshotForTask(ctx, m.name, a.opts.toolchain())
	if err != nil {
		return nil, err
	}
	a.metrics.snapshot.Observe(time.Since(start).Seconds())
	a.log.Info("task snapshot", "dir", s.Dir, "how", s.Method)
	return &snapshot{dir: s.Dir, delete: s.Delete, release: s.Release}, nil
}

func findMachine(ms []*machineState, name string) *machineState {
	for _, m := range ms {
		if m.name == name {
			return m
		}
	}
	return nil
}

func machineNames(ms []*machineState) string {
	if len(ms) == 0 {
		return "none"
	}
	var names []string
	for _, m := range ms {
		names = append(names, m.name)
	}
	return strings.Join(names, ", ")
}

// headers returns the machine header manifests of ms, as --dump-machines
// prints them and task requests carry them.
func headers(ms []*machineState) []manifest.Manifest {
	var out []manifest.Manifest
	for _, m := range ms {
		h := m.machine.Header()
		out = append(out, h.Manifest())
	}
	return out
}
