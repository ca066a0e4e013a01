// Package agent is buildfarm's build agent, after build2's bbot agent: it
// runs on a build host, one instance per toolchain, finds and bootstraps
// the machines in its machines directory, asks controllers for tasks, and
// runs each task in a fresh snapshot of a machine, in a one-shot VM whose
// only way out is the agent's TFTP server.
//
// The agent's work, in the order the code follows (Agent.Run, serve):
//
//  1. Find the VMs an earlier run suspended (records in --registry): keep
//     those alive and within --suspend-limit, re-opening their consoles;
//     destroy the others' leftovers. Then clean up what a crashed
//     predecessor left: per-task snapshots, network namespaces, TFTP
//     directories, sparing every live VM's.
//  2. Deliver the results an earlier run spooled but could not upload.
//
// Then each of --instances slots loops over steps 3 to 7:
//
//  3. Enumerate the machines, as bbot does before each task request (so
//     that machine add, upgrade and remove reach a running agent), and
//     bootstrap each one whose bootstrapped copy is missing or out of date
//     (new machine id, new toolchain id, older worker), each in a VM of
//     its own with three deadlines (startup: the first TFTP request;
//     bootstrap: bootstrap.manifest uploaded; shutdown). A VM that never
//     makes its first request mis-booted and is retried up to the limit;
//     past the limits it is suspended, not destroyed, and the agent
//     carries on with its other machines (the admin is told: a failed
//     bootstrap or a skipped machine is mailed once per agent run). A machine is offered under its
//     manifest's name, which machine add makes its name in the volume.
//     Each bootstrapped machine that has none gets a warm state (warm.go):
//     booted once more to the point where its worker waits for its task,
//     and saved (unless --start cold): the devices' state, and the memory
//     in a sparse RAM file that restored VMs map copy on write.
//  4. Ask each controller in turn for a task (package ctlclient), with
//     long polling (the Buildfarm-Wait header); a controller that fails,
//     answers garbage or too much, or takes longer than --request-timeout
//     is logged and skipped. Without a task, back off with jitter, from
//     about a second up to --request-interval.
//  5. Refuse at once a task whose challenge cannot be signed (no
//     --auth-key). A task without buildfarm-* steps gets an error result
//     saying so (unsupported, for a build2 package build), as does one
//     whose sources cannot be downloaded from its buildfarm-archive-url or
//     do not match its buildfarm-archive-sha256.
//  6. Perform the task: snapshot the bootstrapped machine (its warm
//     machine for a warm start), place the task manifest and its sources
//     in the VM's TFTP get/ directory, boot the VM in its own network
//     namespace, or with --bridge on that host bridge through a tap of
//     its own, with a fresh MAC and an address by DHCP (bridge.go) (or
//     restore it from the warm state, falling back to a boot when that
//     does not fit or fails), wait for the result with the
//     startup and build deadlines, and parse it. An abnormal end
//     suspends the VM for investigation; otherwise the VM is forced down
//     as soon as the result is in (the guest's own power-off would only
//     sync a disk about to be discarded) and the snapshot deleted. Every VM has a console (package console)
//     and a record (package vmrecord) while it lives.
//     Meanwhile the worker's progress and its operations' output, as it
//     is written, go to the controller's live endpoints (livelog.go); a
//     cancel in the controller's answers stops the VM, deletes the
//     snapshot and reports the task aborted.
//  7. Sign the challenge (package auth: as bbot for RSA keys, Ed25519
//     otherwise), write the result to the spool, and upload it. A failed
//     upload stays in the spool and is retried with back-off, also after
//     a restart, until the controller takes it (2xx) or refuses it for
//     good (4xx other than 408 and 429).
//
// --fake-request performs one task from a file instead of the loop.
//
// A suspended VM (suspend.go) is paused and detached: its QEMU, snapshot,
// network namespace and files outlive the task and the agent, the one
// exception to "a QEMU never outlives its agent", until --suspend-limit
// passes (the running agent, or the next one at its start, destroys it),
// the admin halts it (buildfarm console VM halt), or --suspend-max
// suspended VMs are on the host and it is the oldest: then it is
// destroyed and the agent goes on taking tasks. Each suspension is mailed
// to the admin with --smtp-relay and --admin-email. NotifyCrash is what a
// supervisor that restarts a crashed agent calls to tell the admin.
//
// External tools: qemu-system-*, ip (iproute2), and btrfs-progs or
// qemu-img for the machine volumes. Needs root for network namespaces and
// taps.
package agent
