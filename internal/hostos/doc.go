// Package hostos is buildfarm's host OS, after build2's Build OS: a build
// host configured entirely by buildos.* parameters (on the kernel command
// line when the host boots our image, or in a file on an ordinary host),
// whose monitor fetches the toolchains, starts the agent instances with
// their share of the machine, restarts those that crash, and, when the OS
// build or a toolchain changes upstream, lets the running builds finish and
// then reboots (host OS) or restarts the agents (ordinary host).
//
// The concepts, one file each:
//
//   - cmdline.go, config.go: the buildos.* parameters, from a kernel
//     command line (ParseCmdline) or a file (ParseFile);
//   - slice.go: CPUs and RAM, less the reserve, times the overcommit,
//     divided among the agent instances (Derive);
//   - checksums.go, fetch.go, toolchain.go: a toolchain's checksums file,
//     its downloads (http, https, tftp, file; resumed; progress on a
//     terminal) and its directory <tftp>/toolchains/<name>/;
//   - monitor.go: the supervisor of the agents (Monitor.Run), which gives
//     each its slice, nice value, bridge, key and controllers;
//   - key.go: the agents' key (--auth-key), made on the state volume (or
//     by install) when there is none, for the admin to register;
//   - setup.go, storage.go: the host set-up when running as the host OS:
//     storage by label, network, SSH, clean-up;
//   - systemd.go: the units for an ordinary host (Install).
//
// External tools, for the set-up on the host OS only: mount, ip, brctl,
// udhcpc and udhcpd (busybox), dropbear, iptables (when present); on an
// ordinary host, systemd-run (--systemd); in tests, systemd-analyze,
// mkfs.ext4, mkfs.btrfs, losetup.
package hostos
