// Package tftp is buildfarm's TFTP server and client: the only channel
// between the agent and the worker inside a guest VM. The worker GETs its
// task and toolchain files and PUTs its result over it.
//
// It implements RFC 1350 (octet mode; netascii is refused with an error),
// option negotiation (RFC 2347) with blksize (RFC 2348, 8 to 65464), tsize
// and timeout (RFC 2349) and windowsize (RFC 7440). Block numbers roll over
// from 65535 to 0, as tftpd-hpa, atftp and busybox expect, so files of any
// size transfer. A duplicate ACK never causes a retransmission (no
// sorcerer's apprentice); lost packets are retransmitted on timeout a
// bounded number of times.
//
// The server faces code from builds that are not trusted. A Server maps
// request names with bbot-style rules (see ParseRule), refuses ".." and
// absolute names, and resolves the rest beneath its root through an os.Root
// (descriptor-relative lookups that refuse symlinks leading out, free of
// check-then-use races), so no name reaches outside it. Only regular files
// are served, and an upload never replaces a symlink. An upload lands
// in a temporary file renamed into place only when complete, within
// per-transfer and per-server size limits. The server never opens its
// listening socket itself: Serve and ServeIdle take the caller's, so the
// agent can open it inside a VM's network namespace.
//
// The server's transfers read and write their sockets through package
// net, so they wait in Go's network poller like the rest of the process:
// the agent's server shares its process with the agent's HTTP, signals
// and other VMs' transfers (TestResponsive). A Dedicated client (the
// worker, alone in its guest) uses its socket's descriptor directly in
// blocking mode, connected to the server, and sends a window as one UDP
// GSO send and takes it as one GRO receive where the kernel allows.
//
// The package needs nothing beyond the standard library, so the static
// worker binary that uses the client (Get, Put) stays small.
//
// The tests exercise the real peers tftpd-hpa (in.tftpd), tftp-hpa (tftp),
// atftp and busybox tftp; they run when BUILDFARM_VM_TESTS=1.
package tftp
