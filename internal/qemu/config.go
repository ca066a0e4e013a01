// Package qemu runs buildfarm's one-shot VMs under QEMU. Config describes a
// VM and Args turns it into QEMU's command line, purely (golden-tested); VM
// is the running machine: Start once in an empty working directory of its
// own, Wait (safe for many callers), Shutdown by ACPI power-down with a
// deadline, Forcedown, Suspend and Resume over QMP (package qmp), Info,
// WaitConsole; SaveState and Config.Incoming save a running guest and
// restore it in a new QEMU (a warm start).
//
// A QEMU never outlives its parent, unless Detach says so: it runs in its
// own process group under a tether (proc.StartTethered), a small process
// between it and its parent that kills it when the parent dies; QEMU's
// Pdeathsig SIGKILL ties it to the tether. VM.Detach releases the tie, so
// that a VM suspended for investigation outlives the agent that ran it;
// the tether then stays QEMU's parent until QEMU exits. The tether is
// started from an OS thread locked for the life of the VM, which may enter
// the VM's network namespace. It may run inside a network namespace of the VM's own (package
// netns), where user-mode networking lets the guest reach only the
// services bound to that namespace's loopback, as 10.0.2.2.
//
// Guests are x86_64 (-M q35) or aarch64 (-M virt, CPU AArch64CPU, console
// ttyAMA0), with the same virtio PCI devices on both: virt has a PCIe host
// bridge, boots as fast with virtio-*-pci as with virtio-mmio (measured:
// 1.47 s against 1.51 s to an init with its disk and NIC), and PCI keeps a
// machine manifest's -device options and the console's hot-plug the same
// for both architectures. KVM runs only guests of the host's architecture.
//
// x86_64 guests get q35, not QEMU's default pc: when the guest's kernel
// enables a PCI device it looks up its interrupt in the ACPI _PRT of the
// host bridge, which on pc is an AML method that builds the 128-entry
// table in a loop each time it is evaluated, and on q35 a table built
// once. Under TCG that is 0.1-0.2 s of guest CPU per virtio device on pc
// (disk, NIC and console ports: 0.3-0.6 s of every boot), and next to
// nothing on q35 (bench/README.md "VM boot"). q35's root bus takes no
// hot-plugged device, so an x86_64 guest also gets the empty PCIe root
// ports HotplugPorts, for devices added while it runs.
//
// A guest powers off on system_powerdown only if it handles the power
// button. On x86_64 that is the ACPI button: the button and evdev modules
// loaded and something acting on the event (busybox acpid with an
// executable /etc/acpi/PWRF/00000080 that runs poweroff -f). On aarch64,
// virt without firmware has no ACPI: QEMU pulses pin 3 of the PL061 GPIO
// for 100 ms, and Debian's cloud kernel has no gpio-keys driver, so the
// guest watches the line itself (package image's init does); poweroff -f
// then ends QEMU through PSCI.
//
// External tools: qemu-system-x86_64 (Debian's qemu-system-x86, which
// ships qboot.rom, the fast firmware used for direct kernel boot on x86)
// and qemu-system-aarch64 (qemu-system-arm) for aarch64 guests.
package qemu

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/buildfarm/buildfarm/internal/arch"
)

// AArch64CPU is the CPU model of aarch64 guests under TCG (virt's default
// CPU is 32-bit). Measured here, kernel to a busybox init that powers off
// (bench/README.md "aarch64 guests"): cortex-a57 and cortex-a72 about 1.4 s,
// neoverse-n1 1.5 s, max,pauth-impdef=on 2.2 s, max 6.2 s (the
// architected pointer authentication is costly to emulate). Under KVM the
// guest gets the host's CPU.
const AArch64CPU = "cortex-a57"

// Accelerators.
const (
	KVM = "kvm"
	TCG = "tcg"
)

// QbootROM is where Debian's QEMU keeps qboot, a minimal firmware that
// boots a kernel given with -kernel faster than SeaBIOS (2.0 s against
// 2.4 s to a busybox init here, under TCG).
const QbootROM = "/usr/share/qemu/qboot.rom"

// HotplugPorts are the ids of the empty PCIe root ports a q35 guest gets
// (see the package documentation): the buses of hot-added devices, one
// device each (QMP device_add with "bus"), since q35's root bus takes none.
var HotplugPorts = []string{"hotplug0", "hotplug1"}

// Drive is a virtio block device.
type Drive struct {
	Path     string
	Format   string // raw (default) or qcow2
	ReadOnly bool
}

// Network modes.
const (
	NetNone = "none"
	NetUser = "user" // slirp: the guest is 10.0.2.15, the host 10.0.2.2
	// NetTap is a tap device the caller made (package tap), on a bridge:
	// the guest is on the bridge's network. A guest restored from a saved
	// state announces nothing (-global migration.announce-rounds=0: no
	// RARP from QEMU, no gratuitous ARP asked of the guest), since the
	// MAC the state holds is no longer that VM's.
	NetTap = "tap"
)

// Net is the guest's one network interface, a virtio-net device.
type Net struct {
	Mode string // NetUser (default), NetTap or NetNone
	MAC  string // optional, for example 00:01:02:03:04:0b
	Tap  string // NetTap: the tap device's name
}

// Port is a virtio-serial port: the guest sees a character device named
// Name, and the host its unix socket Socket, which QEMU listens on. Until a
// host program connects, the guest's writes to the port block.
type Port struct {
	Name   string // for example org.buildfarm.console
	Socket string
}

// Config describes a VM. Paths are used as given; the VM fills in the
// defaults (socket and log in its working directory).
type Config struct {
	Name     string    // shown by QEMU and in errors
	Arch     arch.Arch // the guest's; x86_64 when empty
	Binary   string    // default qemu-system-ARCH
	Machine  string    // default q35 on x86_64, virt on aarch64
	CPUs     int       // default 1
	MemoryMB int       // default 256
	// Accel is KVM or TCG (resolve "auto" with package accel first); KVM
	// only for a guest of the host's architecture.
	Accel string

	// Firmware is the -bios image. Empty means QbootROM when booting a
	// kernel directly on x86_64 and QEMU's default otherwise; "default"
	// always means QEMU's default.
	Firmware string

	Kernel string // direct kernel boot: the kernel image
	Initrd string
	Append string // the kernel command line
	Drives []Drive

	Net Net

	SerialLog string // the guest's serial console goes to this file
	// SerialSocket, when set, puts the serial console on a unix socket that
	// QEMU listens on (one client at a time; a person attaches through it)
	// and still logs it to SerialLog.
	SerialSocket string
	// Ports are virtio-serial ports, each on a unix socket QEMU listens on:
	// channels between the host and programs in the guest, which finds them
	// by name in /sys/class/virtio-ports/*/name (the virtio_console module).
	Ports []Port

	QMPSocket string   // the QMP unix socket
	VNC       string   // optional VNC display, for example 127.0.0.1:1 or unix:PATH
	NoReboot  bool     // exit instead of rebooting (a guest reboot ends the VM)
	Paused    bool     // start with the CPUs stopped (-S), to be resumed over QMP
	Extra     []string // more QEMU arguments, for example a machine manifest's options

	// RAMFile, when set, holds the guest's memory (memory-backend-file)
	// instead of anonymous memory QEMU allocates. With RAMShared the file
	// is the memory: the guest's writes go to it. Without, it is mapped
	// copy on write: the guest starts with the file's contents, its
	// writes stay its own, the file is never written, and only the pages
	// the guest touches are read (see VM.SaveDevices).
	RAMFile   string
	RAMShared bool

	// Incoming restores a guest's saved state instead of booting it
	// (-incoming; see IncomingFile and VM.SaveState). The rest of the
	// configuration must match the saved VM's.
	Incoming string
	// IncomingDevices says that the state Incoming names holds the
	// devices only, without the memory, which is RAMFile's (a state
	// VM.SaveDevices wrote). QEMU then starts with -incoming defer, and
	// Start hands it Incoming once it has told it so.
	IncomingDevices bool

	// NetNS is the network namespace file (for example
	// /run/netns/bf-123-1) to run QEMU in; empty for the caller's.
	NetNS string
}

// binary returns the QEMU program for c.
func (c *Config) binary() string {
	if c.Binary != "" {
		return c.Binary
	}
	return "qemu-system-" + string(c.arch())
}

func (c *Config) arch() arch.Arch {
	if c.Arch == "" {
		return arch.X8664
	}
	return c.Arch
}

// Args returns QEMU's command line for c, program name first.
func (c *Config) Args() ([]string, error) {
	guest := c.arch()
	if guest != arch.X8664 && guest != arch.AArch64 {
		return nil, fmt.Errorf("vm %s: unknown architecture %q", c.Name, guest)
	}
	if c.Accel != KVM && c.Accel != TCG {
		return nil, fmt.Errorf("vm %s: accelerator %q, want kvm or tcg", c.Name, c.Accel)
	}
	if c.Accel == KVM && guest != arch.Host() {
		return nil, fmt.Errorf("vm %s: KVM runs only guests of the host's architecture (%s), not %s: use TCG", c.Name, arch.Host(), guest)
	}
	if c.Kernel == "" && len(c.Drives) == 0 && !c.Paused {
		return nil, fmt.Errorf("vm %s: nothing to boot: no kernel and no drive", c.Name)
	}
	if c.Kernel == "" && (c.Initrd != "" || c.Append != "") {
		return nil, fmt.Errorf("vm %s: initrd or kernel command line without a kernel", c.Name)
	}
	if c.QMPSocket == "" {
		return nil, fmt.Errorf("vm %s: no QMP socket", c.Name)
	}
	if c.SerialLog == "" {
		return nil, fmt.Errorf("vm %s: no serial log", c.Name)
	}
	if c.IncomingDevices && c.Incoming != "" && c.RAMFile == "" {
		return nil, fmt.Errorf("vm %s: a state without memory needs a RAM file", c.Name)
	}
	paths := []string{c.QMPSocket, c.SerialLog, c.Kernel, c.Initrd, c.SerialSocket, c.RAMFile}
	for _, p := range c.Ports {
		if p.Name == "" || p.Socket == "" || strings.ContainsAny(p.Name, ", ") {
			return nil, fmt.Errorf("vm %s: virtio-serial port %q on %q: want a name without commas or blanks, and a socket", c.Name, p.Name, p.Socket)
		}
		paths = append(paths, p.Socket)
	}
	for _, p := range paths {
		if strings.Contains(p, ",") {
			return nil, fmt.Errorf("vm %s: path %q has a comma, which QEMU's option syntax cannot carry", c.Name, p)
		}
	}

	machine := c.Machine
	if machine == "" {
		machine = "q35"
		if guest == arch.AArch64 {
			machine = "virt"
		}
	}
	cpus, mem := c.CPUs, c.MemoryMB
	if cpus == 0 {
		cpus = 1
	}
	if mem == 0 {
		mem = 256
	}
	a := []string{c.binary()}
	if c.Name != "" {
		a = append(a, "-name", c.Name)
	}
	machineOpt := machine + ",accel=" + c.Accel
	if c.RAMFile != "" {
		machineOpt += ",memory-backend=" + ramID(machine)
	}
	a = append(a, "-nodefaults", "-no-user-config", "-display", "none",
		"-machine", machineOpt)
	// A saved state (VM.SaveState) leaves out the run state of the guest,
	// which is saved stopped: restored, it runs.
	a = append(a, "-global", "migration.store-global-state=off")
	switch {
	case c.Accel == KVM:
		a = append(a, "-cpu", "host")
	case guest == arch.AArch64:
		a = append(a, "-cpu", AArch64CPU)
	}
	a = append(a, "-smp", strconv.Itoa(cpus), "-m", strconv.Itoa(mem))
	if c.RAMFile != "" {
		share := "off"
		if c.RAMShared {
			share = "on"
		}
		a = append(a, "-object", fmt.Sprintf("memory-backend-file,id=%s,size=%dM,mem-path=%s,share=%s", ramID(machine), mem, c.RAMFile, share))
	}

	switch {
	case c.Firmware == "default":
	case c.Firmware != "":
		a = append(a, "-bios", c.Firmware)
	case c.Kernel != "" && guest == arch.X8664:
		a = append(a, "-bios", QbootROM)
	}
	if c.Kernel != "" {
		a = append(a, "-kernel", c.Kernel)
		if c.Initrd != "" {
			a = append(a, "-initrd", c.Initrd)
		}
		if c.Append != "" {
			a = append(a, "-append", c.Append)
		}
	}
	for i, d := range c.Drives {
		if strings.Contains(d.Path, ",") {
			return nil, fmt.Errorf("vm %s: drive %q has a comma in its path", c.Name, d.Path)
		}
		format := d.Format
		if format == "" {
			format = "raw"
		}
		if format != "raw" && format != "qcow2" {
			return nil, fmt.Errorf("vm %s: drive %s: format %q, want raw or qcow2", c.Name, d.Path, format)
		}
		opt := fmt.Sprintf("file=%s,format=%s,if=virtio,index=%d", d.Path, format, i)
		if d.ReadOnly {
			opt += ",readonly=on"
		}
		a = append(a, "-drive", opt)
	}

	netdev := ""
	switch c.Net.Mode {
	case "", NetUser:
		netdev = "user,id=net0"
	case NetTap:
		if c.Net.Tap == "" || strings.ContainsAny(c.Net.Tap, ", ") {
			return nil, fmt.Errorf("vm %s: tap device %q: want a name without commas or blanks", c.Name, c.Net.Tap)
		}
		netdev = "tap,id=net0,ifname=" + c.Net.Tap + ",script=no,downscript=no"
		a = append(a, "-global", "migration.announce-rounds=0")
	case NetNone:
	default:
		return nil, fmt.Errorf("vm %s: network mode %q, want user, tap or none", c.Name, c.Net.Mode)
	}
	if netdev != "" {
		dev := "virtio-net-pci,netdev=net0"
		if c.Net.MAC != "" {
			dev += ",mac=" + c.Net.MAC
		}
		a = append(a, "-netdev", netdev, "-device", dev)
	}

	serial := "file,id=serial0,path=" + c.SerialLog
	if c.SerialSocket != "" {
		serial = "socket,id=serial0,path=" + c.SerialSocket + ",server=on,wait=off,logfile=" + c.SerialLog + ",logappend=on"
	}
	a = append(a, "-chardev", serial, "-serial", "chardev:serial0")
	if len(c.Ports) > 0 {
		a = append(a, "-device", "virtio-serial-pci,id=vser0")
		for i, p := range c.Ports {
			id := fmt.Sprintf("port%d", i)
			a = append(a, "-chardev", "socket,id="+id+",path="+p.Socket+",server=on,wait=off",
				"-device", "virtserialport,bus=vser0.0,chardev="+id+",name="+p.Name)
		}
	}
	if machine == "q35" || strings.HasPrefix(machine, "pc-q35-") {
		for i, id := range HotplugPorts {
			a = append(a, "-device", fmt.Sprintf("pcie-root-port,id=%s,chassis=%d", id, i+1))
		}
	}
	a = append(a, "-qmp", "unix:"+c.QMPSocket+",server=on,wait=off")
	if c.VNC != "" {
		a = append(a, "-vnc", c.VNC)
	}
	if c.NoReboot {
		a = append(a, "-no-reboot")
	}
	if c.Paused {
		a = append(a, "-S")
	}
	switch {
	case c.Incoming != "" && c.IncomingDevices:
		a = append(a, "-incoming", "defer")
	case c.Incoming != "":
		a = append(a, "-incoming", c.Incoming)
	}
	return append(a, c.Extra...), nil
}

// ramID is the id QEMU gives the memory of a machine it allocates itself
// (its default_ram_id): a RAMFile's backend takes the same, so that a
// state saved from either kind of VM restores into the other.
func ramID(machine string) string {
	switch {
	case machine == "virt" || strings.HasPrefix(machine, "virt-"):
		return "mach-virt.ram"
	case machine == "microvm":
		return "microvm.ram"
	}
	return "pc.ram"
}

// Program returns the QEMU program c runs: Binary, or qemu-system-ARCH.
func (c *Config) Program() string { return c.binary() }
