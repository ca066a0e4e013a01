package machine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/buildfarm/buildfarm/internal/proc"
)

// Source is what Add and Upgrade make a revision from: exactly one of
// Dir and Stream.
type Source struct {
	// Dir is a machine directory (manifest, disk.img, kernel, ...), or a
	// btrfs subvolume. A read-only subvolume is snapshotted when it is on
	// the volume's file system and sent (btrfs send | btrfs receive) when
	// it is on another btrfs; anything else is copied, with reflinks where
	// the file systems allow.
	Dir string
	// Parent, with Dir, is a read-only subvolume that a revision of the
	// machine was received from: only the difference is sent (btrfs send
	// -p Parent Dir).
	Parent string
	// Stream is a btrfs send stream of one read-only subvolume, as made on
	// another host by btrfs send [-p PARENT] (btrfs volumes only).
	Stream io.Reader
}

// Add adds the new machine name from src as revision <P>.0, read-only, and
// links <name>-<P> to it. The machine manifest in src must name the machine
// name (ErrNameMismatch otherwise), so that the name agents offer and match
// tasks against, the manifest's, is the machine's name in the volume. The sequence is safe on a live host: the revision
// is made under a temporary name and only the link's appearance, last,
// makes it visible to agents.
func (v *Volume) Add(ctx context.Context, name string, src Source) (*Installed, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	if src.Dir != "" { // refuse a wrong name before making anything
		if err := checkManifestName(name, src.Dir); err != nil {
			return nil, err
		}
	}
	mdir := v.machineDir(name)
	if err := os.MkdirAll(mdir, 0o755); err != nil {
		return nil, fmt.Errorf("add machine %s: %w", name, err)
	}
	return v.install(ctx, name, src, true)
}

// Upgrade adds a new revision <P>.<R+1> of machine name from src and
// switches the link to it by an atomic rename, so that an agent sees either
// the old revision or the new one. Running tasks keep their snapshots;
// agents bootstrap the new revision when they next enumerate. The previous
// revision (the one the link pointed to) is kept, for a rollback and as the
// parent of incremental sends; other ones are deleted.
func (v *Volume) Upgrade(ctx context.Context, name string, src Source) (*Installed, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	if _, _, err := v.Current(name); err != nil {
		return nil, fmt.Errorf("upgrade: %w", err)
	}
	return v.install(ctx, name, src, false)
}

// Installed is a revision made by Add or Upgrade.
type Installed struct {
	Revision Revision
	Dir      string // <name>-<P>.<R>
	// Method says how it was made: "copy", "reflink", "btrfs snapshot",
	// "btrfs send | receive (N bytes)", "btrfs send -p | receive (N bytes)",
	// "btrfs receive (N bytes)".
	Method string
}

// install is Add (add) or Upgrade:
//
//  1. Take the machine lock (waiting for a bootstrap in progress); check
//     that the machine is new (add) or there (upgrade).
//  2. Import src, read-only, under a temporary name in the machine
//     directory (a btrfs receive: under the name the stream gives it),
//     holding that name's own lock so that CleanStray leaves it be.
//  3. Pick the next revision number; rename the import to <name>-<P>.<R>
//     (within the directory: a read-only subvolume cannot move to another).
//  4. Switch the link: a new symlink under a temporary name, renamed over
//     <name>-<P>.
//  5. Upgrade: delete the revisions other than the new one and the one the
//     link pointed to before.
func (v *Volume) install(ctx context.Context, name string, src Source, add bool) (*Installed, error) {
	mdir := v.machineDir(name)
	ml, err := lock(ctx, filepath.Join(mdir, lockFile))
	if err != nil {
		return nil, err
	}
	defer ml.Unlock()
	prev, _, err := v.Current(name)
	if !add && err != nil {
		return nil, fmt.Errorf("upgrade: %w", err)
	} else if add && err == nil {
		return nil, fmt.Errorf("add machine %s: %w (upgrade it instead)", name, ErrExists)
	}
	imp, err := v.importSource(ctx, name, src)
	if err != nil {
		return nil, err
	}
	defer imp.discard(ctx)
	if err := checkManifestName(name, imp.subvolume); err != nil {
		return nil, err
	}
	es, err := v.entries(name)
	if err != nil {
		return nil, err
	}
	rev := Revision{Protocol: v.Protocol}
	var revs []Revision
	for _, e := range es {
		switch {
		case e.kind == kindRevision && e.revision.Protocol == v.Protocol:
			revs = append(revs, e.revision)
			rev.Number = max(rev.Number, e.revision.Number+1)
		}
	}
	final := filepath.Join(mdir, revisionName(name, rev))
	if err := os.Rename(imp.subvolume, final); err != nil {
		return nil, fmt.Errorf("machine %s: %w", name, err)
	}
	imp.subvolume = ""
	if err := switchLink(mdir, linkName(name, v.Protocol), filepath.Base(final)); err != nil {
		return nil, err
	}
	v.Log.Info("machine revision installed", "machine", name, "revision", rev.String(), "backend", v.Backend.Name(), "how", imp.method)
	if !add {
		for _, r := range revs {
			if r == prev { // the previous revision stays
				continue
			}
			if err := v.Backend.Delete(ctx, filepath.Join(mdir, revisionName(name, r))); err != nil {
				return nil, err
			}
			v.Log.Info("old machine revision deleted", "machine", name, "revision", r.String())
		}
	}
	return &Installed{Revision: rev, Dir: final, Method: imp.method}, nil
}

// ErrNameMismatch is returned by Add and Upgrade for a machine whose
// manifest names another machine.
var ErrNameMismatch = errors.New("name differs from the manifest's")

// checkManifestName checks that the machine manifest in dir names the
// machine name: agents offer controllers the manifest's name, and match
// tasks against it, so the directory's name must be the same.
func checkManifestName(name, dir string) error {
	m, err := readMachine(filepath.Join(dir, ManifestFile))
	if err != nil {
		return fmt.Errorf("machine %s: %w", name, err)
	}
	if m.Name != name {
		return fmt.Errorf("machine %s: %w: its manifest names machine %q; add it as %q (agents offer the manifest's name), or change the manifest's name",
			name, ErrNameMismatch, m.Name, m.Name)
	}
	return nil
}

// switchLink points mdir/link at target atomically: symlink under a
// temporary name, then rename over link.
func switchLink(mdir, link, target string) error {
	tmp := filepath.Join(mdir, "."+link+".new-"+randomSuffix())
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("link %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, filepath.Join(mdir, link)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("switch link %s to %s: %w", filepath.Join(mdir, link), target, err)
	}
	return nil
}

// imported is a revision-to-be under a temporary name (.import-<xxx>).
type imported struct {
	v         *Volume
	dir       string // .import-<xxx>, the subvolume itself or (receive) its parent
	subvolume string // the read-only result; "" once renamed into place
	method    string
	lock      *heldLock
}

// importSource makes a read-only copy of src in the machine directory.
func (v *Volume) importSource(ctx context.Context, name string, src Source) (_ *imported, err error) {
	if (src.Dir == "") == (src.Stream == nil) {
		return nil, errors.New("machine source: want a directory or a btrfs send stream")
	}
	mdir := v.machineDir(name)
	imp := &imported{v: v, dir: filepath.Join(mdir, ".import-"+randomSuffix())}
	var ok bool
	if imp.lock, ok, err = tryLock(filepath.Join(mdir, workLockName(filepath.Base(imp.dir)))); err != nil {
		return nil, err
	} else if !ok {
		return nil, fmt.Errorf("import %s: locked", imp.dir)
	}
	defer func() {
		if err != nil {
			imp.discard(ctx)
		}
	}()
	btrfsVol := v.Backend.Name() == BackendBtrfs
	if src.Stream != nil || src.Parent != "" {
		if !btrfsVol {
			return nil, fmt.Errorf("volume %s is not on btrfs: btrfs send streams cannot be received there", v.Dir)
		}
		return imp, imp.receive(ctx, name, src)
	}
	if btrfsVol {
		ro, err := isReadOnlySubvolume(ctx, src.Dir)
		if err != nil {
			return nil, err
		}
		if ro {
			// The same file system: a read-only snapshot. Another one:
			// send and receive, which keeps the received UUID that later
			// incremental sends need.
			err := proc.Run(ctx, nil, "btrfs", "subvolume", "snapshot", "-r", src.Dir, imp.dir)
			if err == nil {
				imp.subvolume, imp.method = imp.dir, "btrfs snapshot"
				return imp, nil
			}
			v.Log.Debug("snapshot across file systems failed; sending", "source", src.Dir, "err", err)
			return imp, imp.receive(ctx, name, src)
		}
	}
	if err := v.Backend.Create(ctx, imp.dir); err != nil {
		return nil, err
	}
	imp.subvolume = imp.dir
	if imp.method, err = copyTree(ctx, src.Dir, imp.dir, false); err != nil {
		return nil, err
	}
	if err := v.Backend.SetReadOnly(ctx, imp.dir); err != nil {
		return nil, err
	}
	return imp, nil
}

// receive runs btrfs receive in the machine directory from src.Stream, or
// from btrfs send of src.Dir (with -p src.Parent). The received subvolume
// keeps the name it had on the sending side until install renames it: a
// read-only subvolume can only be renamed within its directory, and
// clearing read-only would drop the received UUID that later incremental
// streams need.
func (imp *imported) receive(ctx context.Context, name string, src Source) error {
	mdir := filepath.Dir(imp.dir)
	before, err := os.ReadDir(mdir)
	if err != nil {
		return fmt.Errorf("receive: %w", err)
	}
	recv := proc.Command(ctx, "btrfs", "receive", mdir)
	counted := &countingReader{}
	recv.Stdin = counted
	var send *exec.Cmd
	if src.Stream != nil {
		counted.r = src.Stream
		imp.method = "btrfs receive"
	} else {
		args := []string{"send", "-q"}
		imp.method = "btrfs send | receive"
		if src.Parent != "" {
			args = append(args, "-p", src.Parent)
			imp.method = "btrfs send -p | receive"
		}
		send = proc.Command(ctx, "btrfs", append(args, src.Dir)...)
		out, err := send.StdoutPipe()
		if err != nil {
			return err
		}
		counted.r = out
		if err := send.Start(); err != nil {
			return fmt.Errorf("send %s: %w", src.Dir, err)
		}
	}
	err = proc.Wait(recv)
	// btrfs receive names what it made only sometimes ("At subvol X", not
	// for incremental streams): look for the new entry instead. Task
	// snapshots may appear meanwhile; nothing else can, under the lock.
	var made []string
	if after, rerr := os.ReadDir(mdir); rerr == nil {
		for _, de := range after {
			n := de.Name()
			if !isHidden(n) && classify(name, n).kind != kindWork &&
				!slices.ContainsFunc(before, func(b os.DirEntry) bool { return b.Name() == n }) {
				made = append(made, n)
			}
		}
	}
	if len(made) == 1 {
		imp.subvolume = filepath.Join(mdir, made[0])
	}
	if send != nil {
		if err != nil {
			proc.KillGroup(send, unix.SIGTERM)
		}
		err = errors.Join(err, proc.Wait(send))
	}
	if err == nil && imp.subvolume == "" {
		err = fmt.Errorf("btrfs receive made %q, want one new subvolume", made)
	}
	if err != nil {
		return fmt.Errorf("receive into %s: %w", mdir, err)
	}
	imp.method += fmt.Sprintf(" (%d bytes)", counted.n)
	return nil
}

// discard deletes what is left of the import.
func (imp *imported) discard(ctx context.Context) {
	ctx = context.WithoutCancel(ctx)
	if imp.subvolume != "" && imp.subvolume != imp.dir {
		if err := imp.v.Backend.Delete(ctx, imp.subvolume); err != nil {
			imp.v.Log.Warn("discard import", "err", err)
		}
	}
	if err := imp.v.Backend.Delete(ctx, imp.dir); err != nil {
		imp.v.Log.Warn("discard import", "err", err)
	}
	os.Remove(filepath.Join(filepath.Dir(imp.dir), workLockName(filepath.Base(imp.dir))))
	imp.lock.Unlock()
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// isReadOnlySubvolume reports whether dir is a read-only btrfs subvolume.
func isReadOnlySubvolume(ctx context.Context, dir string) (bool, error) {
	sub, err := IsSubvolume(dir)
	if err != nil || !sub {
		return false, err
	}
	out, err := proc.Output(ctx, "btrfs", "property", "get", "-ts", dir, "ro")
	if err != nil {
		return false, fmt.Errorf("subvolume %s: %w", dir, err)
	}
	return string(out) == "ro=true\n", nil
}
