// Package console is the management console of a running VM, after User
// Mode Linux's uml_mconsole: a server on a unix socket in the VM's directory
// (SocketName), with a predictable link per toolchain and agent instance
// (LinkPath), that answers one command a line, and its client.
//
// # Protocol
//
// The client writes a command line: a command, and for some an argument
// after one space (the rest of the line). The server answers with a status
// line, "OK" or "ERR MESSAGE" (OK may carry a short message too), then the
// reply's body, line by line, then a line holding a lone ".". A body line
// that starts with "." is sent with one more "." in front (as SMTP does),
// which the client removes. A connection may carry any number of commands.
//
// Two commands end the exchange of commands instead: after the status line
// "OK", notify streams notification lines until either side closes the
// connection, and attach relays raw bytes both ways between the connection
// and the guest's serial console.
//
// Commands (Commands lists them with their help):
//
//	help, version          the commands; buildfarm's and QEMU's versions (over QMP)
//	halt, reboot, cad      QMP quit; QMP system_reset; Ctrl-Alt-Del to the guest
//	stop, go               QMP stop and cont
//	sysrq KEY              Alt-SysRq-KEY to the guest's keyboard
//	config [DEV[=SPEC]]    list devices; query one; hot-add a disk or a NIC
//	remove DEV             hot-unplug a device that config added
//	log TEXT, proc FILE    through the guest channel (below)
//	backup DEST            an online copy of the VM's disk
//	notify, attach         the guest's notifications; its serial console
//
// # The guest channel
//
// log, proc and the file system sync of backup need the guest: the worker
// serves a virtio-serial port, worker.ConsolePort, whose host end is a unix
// socket of QEMU's that the server connects to (JSON lines, see
// worker.ChannelRequest). They answer while the worker runs, which in a
// build VM is the guest's whole life. Guest programs write notification
// lines to a second port, worker.NotifyPort; the server reads both ports
// from its start and keeps the last notifications for notify, so that
// notify shows the worker's boot message however late it is asked.
// SetPorts puts the ports and a serial console socket into a VM's
// qemu.Config.
//
// External tools: cp (reflink copies) and qemu-img (copies of qcow2 disks)
// for backup.
package console
