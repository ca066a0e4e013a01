package machine

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/buildfarm/buildfarm/internal/manifest"
)

// Action is what an agent does with a machine it enumerated.
type Action int

const (
	// ActionUse: the bootstrapped machine is current; run tasks in it.
	ActionUse Action = iota
	// ActionBootstrap: bootstrap (again) from the current revision.
	ActionBootstrap
	// ActionIgnore: leave the machine alone (see the reason).
	ActionIgnore
)

func (a Action) String() string {
	switch a {
	case ActionUse:
		return "use"
	case ActionBootstrap:
		return "bootstrap"
	case ActionIgnore:
		return "ignore"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// Decision is an Action and why.
type Decision struct {
	Action Action
	Reason string
}

// Want is what the enumerating agent is: its toolchain's id and the
// versions of the tools it bootstraps with (tool name to numeric version,
// as in the bootstrap manifest).
type Want struct {
	ToolchainID string
	Versions    map[string]uint64
}

// Decide says whether the machine bootstrapped as have (nil: never) is
// current for an agent that wants want, given the id of the machine's
// current revision. In order:
//
//   - not bootstrapped: bootstrap;
//   - bootstrapped by a newer version of any of our tools: ignore the
//     machine (a newer agent owns it now; two agent versions must not take
//     turns re-bootstrapping it while an upgrade rolls out);
//   - a new machine id (an upgrade or a new machine under the old name):
//     bootstrap;
//   - a new toolchain id: bootstrap;
//   - bootstrapped by an older version of any of our tools, or with no
//     version of it recorded: bootstrap;
//   - otherwise use it.
func Decide(machineID string, want Want, have *manifest.BootstrappedMachine) Decision {
	if have == nil {
		return Decision{ActionBootstrap, "not bootstrapped"}
	}
	had := map[string]uint64{}
	for _, v := range have.Bootstrap.Versions {
		had[v.Tool] = v.Version
	}
	tools := slices.Sorted(maps.Keys(want.Versions))
	for _, t := range tools {
		if v, ok := had[t]; ok && v > want.Versions[t] {
			return Decision{ActionIgnore, fmt.Sprintf("bootstrapped by newer %s %d (we are %d)", t, v, want.Versions[t])}
		}
	}
	if have.Machine.ID != machineID {
		return Decision{ActionBootstrap, fmt.Sprintf("new machine id %s (bootstrapped %s)", machineID, have.Machine.ID)}
	}
	if have.Toolchain.ID != want.ToolchainID {
		return Decision{ActionBootstrap, fmt.Sprintf("new toolchain id %s (bootstrapped with %s)", want.ToolchainID, have.Toolchain.ID)}
	}
	for _, t := range tools {
		v, ok := had[t]
		if !ok {
			return Decision{ActionBootstrap, fmt.Sprintf("no %s version recorded", t)}
		}
		if v < want.Versions[t] {
			return Decision{ActionBootstrap, fmt.Sprintf("bootstrapped by older %s %d (we are %d)", t, v, want.Versions[t])}
		}
	}
	return Decision{ActionUse, "bootstrapped and current"}
}

// Candidate is one machine as enumerated for a toolchain.
type Candidate struct {
	Volume   *Volume
	Name     string
	Revision Revision          // the revision the link pointed to
	Machine  *manifest.Machine // its manifest; nil when it could not be read
	// Bootstrapped is the machine's bootstrapped manifest for the
	// toolchain, nil when there is none (or it is unreadable).
	Bootstrapped *manifest.BootstrappedMachine
	Decision     Decision
	// Dir is the bootstrapped machine directory <name>-<toolchain>, for
	// ActionUse.
	Dir string
	// Bootstrap is the machine to bootstrap, for ActionBootstrap: the
	// caller must Commit or Abort it.
	Bootstrap *Bootstrapping
}

// ReasonLocked is the reason of a machine ignored because another agent or
// command holds its lock (a bootstrap, upgrade or removal in progress):
// the one ignore that is not worth telling the admin about.
const ReasonLocked = "locked by another agent or command"

// testHookSnapshotted, when set by a test, runs between the snapshot of
// the revision and the second look at the link.
var testHookSnapshotted func(v *Volume, name string)

// linkRetries bounds how often Enumerate snapshots a machine again
// because its link moved while it did.
const linkRetries = 10

// Enumerate goes over every machine of every volume for toolchain tc, as
// bbot's agent does at start:
//
//  1. Take the machine's lock without waiting; if another agent holds it
//     (bootstrapping, or an upgrade or removal in progress), ignore the
//     machine this time.
//  2. Resolve the link <name>-<P>. If it is gone, the machine is being
//     removed: delete our <name>-<toolchain> and skip the machine.
//  3. Snapshot what the link points to as <name>-<toolchain>-<xxx>, and
//     resolve the link again: if it moved meanwhile, delete the snapshot
//     and start over, so that the snapshot is one whole revision.
//  4. Read the revision's machine manifest from the snapshot and the
//     bootstrapped machine manifest from <name>-<toolchain>, and Decide.
//  5. Use or ignore: delete the snapshot, release the lock. Bootstrap: hand
//     the snapshot, still locked, to the caller, who boots it and then
//     commits it as <name>-<toolchain> or aborts.
func (s *Store) Enumerate(ctx context.Context, tc string, want Want) ([]*Candidate, error) {
	if err := CheckToolchain(tc); err != nil {
		return nil, err
	}
	vs, err := s.Volumes()
	if err != nil {
		return nil, err
	}
	var cs []*Candidate
	for _, v := range vs {
		names, err := v.Machines()
		if err != nil {
			return cs, err
		}
		for _, name := range names {
			c, err := v.enumerate(ctx, name, tc, want)
			if err != nil {
				if ctx.Err() != nil {
					abortAll(ctx, cs)
					return nil, err
				}
				v.Log.Warn("machine skipped", "machine", name, "err", err)
				c = &Candidate{Volume: v, Name: name, Decision: Decision{ActionIgnore, err.Error()}}
			}
			if c != nil {
				cs = append(cs, c)
			}
		}
	}
	return cs, nil
}

func abortAll(ctx context.Context, cs []*Candidate) {
	for _, c := range cs {
		if c.Bootstrap != nil {
			c.Bootstrap.Abort(ctx)
		}
	}
}

// enumerate is Enumerate for one machine; nil, nil when it is skipped.
func (v *Volume) enumerate(ctx context.Context, name, tc string, want Want) (_ *Candidate, err error) {
	mdir := v.machineDir(name)
	ml, ok, err := tryLock(filepath.Join(mdir, lockFile))
	if err != nil {
		return nil, err
	}
	if !ok {
		return &Candidate{Volume: v, Name: name, Decision: Decision{ActionIgnore, ReasonLocked}}, nil
	}
	defer func() {
		if ml != nil {
			ml.Unlock()
		}
	}()
	bdir := filepath.Join(mdir, bootstrappedName(name, tc))

	var rev Revision
	var work *Snapshot
	for i := 0; ; i++ {
		r, rdir, err := v.Current(name)
		if errors.Is(err, ErrNotFound) {
			return nil, nil // removed meanwhile
		}
		if errors.Is(err, ErrRemoved) {
			return nil, v.deleteBootstrapped(ctx, name, tc)
		}
		if err != nil {
			return nil, err
		}
		w, err := v.newWork(ctx, name, tc, rdir)
		if testHookSnapshotted != nil {
			testHookSnapshotted(v, name)
		}
		r2, _, err2 := v.Current(name)
		if err == nil && err2 == nil && r2 == r {
			rev, work = r, w
			break
		}
		if err == nil {
			w.Delete(ctx)
		} else if err2 != nil || r2 == r {
			return nil, err // not because the link moved
		}
		if i == linkRetries {
			return nil, fmt.Errorf("machine %s: link keeps moving", name)
		}
		v.Log.Debug("machine link moved while snapshotting; again", "machine", name)
	}
	defer func() {
		if work != nil {
			work.Delete(ctx)
		}
	}()

	c := &Candidate{Volume: v, Name: name, Revision: rev}
	mf := filepath.Join(work.Dir, ManifestFile)
	if c.Machine, err = readMachine(mf); err != nil {
		return nil, err
	}
	bf := filepath.Join(bdir, BootstrappedFile)
	c.Bootstrapped, err = readBootstrapped(bf)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		v.Log.Warn("unreadable bootstrapped machine manifest; bootstrapping again", "file", bf, "err", err)
	}
	c.Decision = Decide(c.Machine.ID, want, c.Bootstrapped)
	switch c.Decision.Action {
	case ActionUse:
		c.Dir = bdir
	case ActionBootstrap:
		c.Bootstrap = &Bootstrapping{Snapshot: work, Revision: rev, Machine: c.Machine, lock: ml, target: bdir}
		work, ml = nil, nil
	}
	v.Log.Info("machine enumerated", "machine", name, "revision", rev.String(), "toolchain", tc,
		"action", c.Decision.Action.String(), "reason", c.Decision.Reason)
	return c, nil
}

// deleteBootstrapped deletes <name>-<toolchain> of an unlinked machine,
// once no task snapshot is being copied from it.
func (v *Volume) deleteBootstrapped(ctx context.Context, name, tc string) error {
	mdir := v.machineDir(name)
	bdir := filepath.Join(mdir, bootstrappedName(name, tc))
	if _, err := os.Lstat(bdir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	v.Log.Info("machine unlinked; deleting its bootstrapped machine", "machine", name, "dir", bdir)
	up := filepath.Join(mdir, useLockName(filepath.Base(bdir)))
	use, err := lock(ctx, up)
	if err != nil {
		return err
	}
	defer use.Unlock()
	if err := v.Backend.Delete(ctx, bdir); err != nil {
		return err
	}
	return os.Remove(up)
}

func readMachine(path string) (*manifest.Machine, error) {
	ms, err := manifest.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if ms.Len() != 1 {
		return nil, fmt.Errorf("%s: %d manifests, want one machine manifest", path, ms.Len())
	}
	return manifest.ParseMachine(ms.Manifest(0), path, manifest.Lenient)
}

func readBootstrapped(path string) (*manifest.BootstrappedMachine, error) {
	ms, err := manifest.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if ms.Len() != 1 {
		return nil, fmt.Errorf("%s: %d manifests, want one bootstrapped machine manifest", path, ms.Len())
	}
	return manifest.ParseBootstrappedMachine(ms.Manifest(0), path, manifest.Lenient)
}

// Bootstrapping is a machine being bootstrapped: a writable snapshot of
// its current revision, <name>-<toolchain>-<xxx>, with the machine lock
// held so that no other agent bootstraps the machine meanwhile.
type Bootstrapping struct {
	*Snapshot
	Revision Revision
	Machine  *manifest.Machine // the revision's machine manifest

	lock   *heldLock
	target string // <name>-<toolchain>
}

// Commit finishes a successful bootstrap: it writes bm into the snapshot
// (BootstrappedFile), makes it read-only and puts it in place of
// <name>-<toolchain> atomically (rename, or exchange with the old one,
// which is then deleted; tasks running in snapshots of the old one keep
// them). The lock is released either way.
func (b *Bootstrapping) Commit(ctx context.Context, bm *manifest.BootstrappedMachine) error {
	defer b.lock.Unlock()
	v := b.v
	err := manifest.WriteFile(filepath.Join(b.Dir, BootstrappedFile), []manifest.Manifest{bm.Manifest()})
	if err == nil {
		err = v.Backend.SetReadOnly(ctx, b.Dir)
	}
	if err == nil {
		err = b.replace(ctx)
	}
	if err != nil {
		b.Snapshot.Delete(ctx)
		return fmt.Errorf("commit bootstrap of %s: %w", b.target, err)
	}
	// b.Dir now holds the old bootstrapped machine, if there was one.
	err = b.Snapshot.Delete(ctx)
	v.Log.Info("machine bootstrapped", "dir", b.target, "revision", b.Revision.String())
	return err
}

// replace puts the snapshot in place of the bootstrapped machine, once no
// task snapshot is being copied from it.
func (b *Bootstrapping) replace(ctx context.Context) error {
	use, err := lock(ctx, filepath.Join(filepath.Dir(b.target), useLockName(filepath.Base(b.target))))
	if err != nil {
		return err
	}
	defer use.Unlock()
	return renameReplace(b.Dir, b.target)
}

// Abort deletes the snapshot of a failed bootstrap and releases the lock.
func (b *Bootstrapping) Abort(ctx context.Context) error {
	defer b.lock.Unlock()
	return b.Snapshot.Delete(ctx)
}

// Release releases the machine's lock and the snapshot's, and leaves the
// snapshot (see Snapshot.Release), for a failed bootstrap whose VM is kept
// for investigation beyond this process.
func (b *Bootstrapping) Release() {
	b.lock.Unlock()
	b.Snapshot.Release()
}

// renameReplace puts src at dst: an atomic exchange when dst exists (src
// then names the old dst), a rename that will not replace anything
// otherwise.
func renameReplace(src, dst string) error {
	err := unix.Renameat2(unix.AT_FDCWD, src, unix.AT_FDCWD, dst, unix.RENAME_EXCHANGE)
	if errors.Is(err, unix.ENOENT) {
		if _, serr := os.Lstat(dst); errors.Is(serr, fs.ErrNotExist) {
			err = unix.Renameat2(unix.AT_FDCWD, src, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
		}
	}
	if err != nil {
		return fmt.Errorf("rename %s to %s: %w", src, dst, err)
	}
	return nil
}
