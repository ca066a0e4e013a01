// Package worker is what runs inside a guest VM: it talks to the agent over
// TFTP only, and does one of two jobs.
//
// In build mode it downloads the task manifest (task.manifest), the result
// key (key, served once) and the sources archive the task names
// (buildfarm-archive), unpacks the sources, runs the task's operations
// (configure, update, test, install: one shell command each, in that order)
// each with its exit status, log and duration, and uploads the files the
// steps left in $BUILDFARM_ARTIFACTS (as artifact-NAME) and the result
// manifest with the logs inside, under the name the key gives
// (result-KEY.manifest, see ResultName). The steps run as the unprivileged
// user StepUser (uid 1000), which owns the build directory, with
// BUILDFARM_OPERATION, BUILDFARM_TARGET, BUILDFARM_DIR,
// BUILDFARM_ARTIFACTS, HOME (the build directory) and, when the task
// trusts repositories' certificates, BUILDFARM_TRUST (the fingerprints,
// space-separated); the worker runs as root, so a step cannot learn the key
// and upload a result of its own.
// A failing operation is an error and ends the build; a worker that cannot
// go on (no task, no sources) reports abort.
//
// In bootstrap mode it downloads toolchain.manifest, a list of files with
// their SHA-256 sums, fetches and verifies each, installs them under
// DIR/toolchain (a .tar.gz is unpacked), and uploads bootstrap.manifest with
// the versions of what it installed.
//
// Throughout, it uploads a small progress manifest (progress) as each step
// starts and ends, so the agent can show what the guest is doing; while an
// operation runs, its output goes up as it is written, every 200 ms, in
// live log chunks (live-NNNNNN, see LiveChunk), which the agent forwards
// to its controller.
//
// In a guest with the management console's virtio-serial port
// (org.buildfarm.console, see Channel), it also answers the console's
// requests there (a /proc file, a line for the kernel log, sync, freeze and
// thaw of the file systems, the agent's start) and sends it its boot and
// stage messages.
//
// Configuration comes from the kernel command line (/proc/cmdline):
//
//	buildfarm.tftp=HOST[:PORT]      the agent's TFTP server (10.0.2.2:23401; not port
//	                                69, which QEMU's user-mode networking answers itself)
//	buildfarm.mode=build|bootstrap  what to do (build)
//	buildfarm.dir=DIR               the work directory (/build)
//	buildfarm.blksize=N             TFTP block size (65464)
//	buildfarm.start=wait            before the task, ask for the file start until the
//	                                agent serves it, then set the clock and reseed the
//	                                random pool from it (the point a warm start saves
//	                                the guest at and restores it from; see StartFile)
//	buildfarm.start=channel         the same on tap networking (the agent's --bridge),
//	                                with the start over the console's port instead of
//	                                TFTP, and the network renewed from it: a fresh MAC,
//	                                a new DHCP lease (see startchannel.go)
//
// and from the environment the guest's init gives it: BUILDFARM_NET, a
// static network ("NIC ADDRESS/PREFIX GATEWAY") the worker sets up over
// netlink (the NIC and its address before its first request, lo and the
// default route in the background: NetEnv), and BUILDFARM_READY, the file
// that says the rest of the guest's set-up is done (ReadyEnv).
package worker
