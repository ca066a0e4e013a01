// Package initramfs writes and reads Linux initramfs archives (cpio "newc",
// the format the kernel unpacks into its root file system at boot) and finds
// the kernel modules a guest needs, in the order to load them.
//
// The writer is deterministic: entries are sorted by path, every missing
// parent directory is added, inode numbers are assigned in that order, and
// owners and modification times are fixed (root, the Unix epoch), so the same
// contents give the same bytes whatever order they were added in and
// whatever the source files' times. Files, directories, symbolic links and
// device nodes (such as dev/console, which the kernel opens before it runs
// init) are supported; hard links are not.
//
// Module resolution reads lib/modules/VERSION/modules.dep when depmod has
// written it, and otherwise each module's .modinfo section (Debian's
// linux-image packages ship no modules.dep); modules.builtin says which
// modules are built into the kernel and need no loading.
//
// It uses no external programs; its tests use cpio(1) to prove the format.
//
// The newc header code (about 150 of its lines) is its own, not a library's:
// cavaliergopher/cpio writes every device number as zero, so it cannot make
// dev/console, and reads a header with a single Read that may come short;
// u-root's pkg/cpio has what is needed (device numbers, a reproducible mode)
// but comes only in u-root's one large module. The rest (the archive model:
// sorted paths, implied parents, replacement, files read when written; and
// Walk over concatenated, compressed segments) would stay ours with either.
package initramfs
