// Package image builds buildfarm's guest machines: machine directories that
// QEMU boots directly (kernel, initrd, cmdline), with a raw ext4 build disk
// (disk.img) and a build2 machine manifest, as DESIGN.md's "Machines on
// disk" describes. It also reports what takes the space in an initramfs.
//
// Presets:
//
//	busybox  an initramfs of static busybox, buildfarm-worker and the virtio
//	         modules; an empty ext4 build disk mounted on /build
//	debian   the same kernel and initramfs; disk.img holds a debootstrap'd
//	         Debian rootfs with build-essential, which the init mounts and
//	         chroots into to run the worker, so builds get gcc and make
//
// Machines are for x86_64 guests, or for aarch64 ones with Options.Arch
// (QEMU's virt machine, under TCG on an x86_64 host): then the kernel is
// Debian's cloud-arm64 one, busybox the arm64 busybox-static from the cache,
// the worker one built with GOARCH=arm64, the console ttyAMA0, and the init
// watches virt's GPIO power button; the machine manifest says
// buildfarm-arch: aarch64. The debian preset's debootstrap runs the arm64
// programs of its second stage through qemu-user-static's binfmt handler.
//
// The kernel is Debian's cloud kernel from the cache (package cache), fetched
// there with apt-get download and dpkg -x when missing, or one given by the
// caller with its modules. The initramfs is written by package initramfs, so
// the same inputs give the same bytes. The init script (init.sh, embedded)
// is the guest's PID 1.
//
// External programs: mkfs.ext4 (e2fsprogs) for the disk, without mounting;
// busybox --list-full for its applets; for the debian preset debootstrap and
// tar (and, for another architecture, qemu-user-static with binfmt_misc);
// to fetch the kernel apt-get, dpkg and depmod. The debootstrap result
// is kept as a tarball in the cache directory (BUILDFARM_CACHE), so only the
// first debian build waits for it.
package image
