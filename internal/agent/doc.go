// Package agent is buildfarm's build agent, after build2's bbot agent: it
// runs on a build host, one instance per toolchain, finds and bootstraps
// the machines in its machines directory, asks controllers for tasks, and
// runs each task in a fresh snapshot of a machine, in a one-shot VM whose
// only way out is the agent's TFTP server.
//
// The agent's loop, in the order the code follows:
//
//  1. Clean up what a crashed predecessor left: per-task snapshots, network
//     namespaces, TFTP directories.
//  2. Enumerate the machines; bootstrap each one whose bootstrapped copy is
//     missing or out of date (new machine id, new toolchain id, older
//     worker), each in a VM of its own with three deadlines (startup: the
//     first TFTP request; bootstrap: bootstrap.manifest uploaded; shutdown).
//     A VM that never makes its first request mis-booted and is retried up
//     to the limit; past the limits it is suspended, not destroyed, and the
//     agent carries on with its other machines.
//  3. Ask each controller in turn for a task (or take the fake request).
//  4. Perform the task: snapshot the bootstrapped machine, place the task
//     manifest and its sources in the VM's TFTP get/ directory, boot the VM
//     in its own network namespace, wait for the result with the startup,
//     build and shutdown deadlines, and parse it. An abnormal end suspends
//     the VM for investigation; otherwise the VM is forced down and the
//     snapshot deleted.
//  5. Report the result to the controller (or dump it), and go to 2.
//
// External tools: qemu-system-*, ip (iproute2), and btrfs-progs or
// qemu-img for the machine volumes. Needs root for network namespaces.
package agent
