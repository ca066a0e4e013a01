// Package machine keeps the build machines of a build host on disk: the
// volume layout of DESIGN.md ("Machines on disk"), its two storage
// backends, the enumeration an agent does at start, the per-task snapshots,
// and the add, upgrade and remove sequences that are safe on a live host.
//
// A store (the agent's --machines directory) holds volumes; a volume holds
// one directory per machine:
//
//	<volume>/<name>/
//	    <name>-<P>.<R>/              read-only revision R for bootstrap protocol P
//	    <name>-<P> -> <name>-<P>.<R> the current revision, switched by rename
//	    <name>-<toolchain>/          bootstrapped for that toolchain
//	    <name>-<toolchain>-<xxx>/    a task's one-shot snapshot, or a bootstrap
//	                                 in progress (renamed into place when done)
//	    .lock                        flock: one bootstrap, upgrade or removal at a time
//	    .<name>-<toolchain>-<xxx>.lock  held by the owner of that snapshot
//	    .<name>-<toolchain>.use      flock: shared while a task snapshot is
//	                                 copied, exclusive while a bootstrap
//	                                 replaces the machine
//
// The backend is picked per volume from the file system type (statfs): on
// btrfs every one of those directories is a subvolume and a snapshot is
// `btrfs subvolume snapshot`; elsewhere the fallback backend makes reflink
// copies (FICLONE) where the file system supports them, and otherwise a
// qcow2 overlay over a hard link of the disk image below it (disk.qcow2 over
// base-N.img) and a copy of the small files. Disk tells which disk file a
// machine directory has, and its format.
//
// A task snapshot's owner holds an flock on its lock file for as long as the
// snapshot lives, so CleanStray can tell the leftovers of a crashed agent
// from the snapshots of other running agents.
//
// Where to look: layout.go (names, revisions) and volume.go (the store,
// its volumes, a volume's machines and current revisions); enumerate.go
// and list.go (what an agent and `machine list` see); install.go (Add,
// Upgrade, and receiving a revision); remove.go (Remove); snapshot.go
// (task snapshots, CleanStray) and work.go (the snapshots, bootstraps and
// imports in progress, and deleting those whose owner is gone); backend.go,
// btrfs.go and fallback.go (the backends); keep.go and lock.go.
//
// External programs (through package proc): btrfs (btrfs-progs) on btrfs
// volumes; qemu-img for qcow2 overlays on file systems without reflinks.
package machine
