package console

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/buildfarm/buildfarm/internal/buildinfo"
	"github.com/buildfarm/buildfarm/internal/qemu"
	"github.com/buildfarm/buildfarm/internal/qmp"
)

// Command describes a console command, for help texts.
type Command struct {
	Name  string
	Args  string // for example "KEY", "" for none
	Help  string
	Brief string // the line of explanation
}

type command struct {
	Command
	run     func(s *Server, ctx context.Context, arg string) (msg, body string, err error)
	stream  func(s *Server, ctx context.Context, arg string, c net.Conn, r *bufio.Reader)
	long    bool // may take long (backup, remove)
	noArg   bool
	needArg bool
}

func (c *command) timeout() time.Duration {
	if c.long {
		return 30 * time.Minute
	}
	return 30 * time.Second
}

var commands []*command

func init() {
	commands = []*command{
		{Command: Command{Name: "help", Brief: "list the commands"}, noArg: true, run: cmdHelp},
		{Command: Command{Name: "version", Brief: "buildfarm's and QEMU's versions (asks QEMU: proves the VM answers)"}, noArg: true, run: cmdVersion},
		{Command: Command{Name: "halt", Brief: "end the VM at once (QMP quit), no clean shutdown"}, noArg: true, run: qmpCommand("quit", "halted")},
		{Command: Command{Name: "reboot", Brief: "reset the VM at once (QMP system_reset); a VM run with -no-reboot, as the agent's are, ends instead"}, noArg: true, run: qmpCommand("system_reset", "reset")},
		{Command: Command{Name: "cad", Brief: "press Ctrl-Alt-Del on the guest's keyboard"}, noArg: true, run: cmdCad},
		{Command: Command{Name: "stop", Brief: "pause the guest's CPUs (QMP stop)"}, noArg: true, run: cmdRunState("stop")},
		{Command: Command{Name: "go", Brief: "resume the guest's CPUs (QMP cont)"}, noArg: true, run: cmdRunState("cont")},
		{Command: Command{Name: "sysrq", Args: "KEY", Brief: "press Alt-SysRq-KEY on the guest's keyboard (KEY a letter or digit; h lists them in the guest's kernel log)"}, needArg: true, run: cmdSysrq},
		{Command: Command{Name: "config", Args: "[DEV[=SPEC]]", Brief: "no argument: list the devices; DEV: which file, socket or pty backs it; DEV=PATH[,format=qcow2][,readonly]: hot-add a virtio disk; DEV=user or DEV=tap:IFNAME: hot-add a virtio NIC"}, run: cmdConfig},
		{Command: Command{Name: "remove", Args: "DEV", Brief: "hot-unplug DEV (the guest must let it go), then drop its disk or network backend"}, needArg: true, long: true, run: cmdRemove},
		{Command: Command{Name: "log", Args: "TEXT", Brief: "write TEXT into the guest's kernel log (through the guest channel)"}, needArg: true, run: cmdLog},
		{Command: Command{Name: "proc", Args: "FILE", Brief: "the guest's /proc/FILE (kmsg: its kernel log), through the guest channel"}, needArg: true, run: cmdProc},
		{Command: Command{Name: "backup", Args: "DEST", Brief: "online copy of the VM's disk to the new file DEST (absolute): sync and freeze the guest's file systems, stop, copy (reflink when possible), go, thaw"}, needArg: true, long: true, run: cmdBackup},
		{Command: Command{Name: "notify", Brief: "stream the guest's notifications (the worker's boot and stage messages, lines written to /dev/virtio-ports/org.buildfarm.notify) until interrupted"}, noArg: true,
			stream: func(s *Server, ctx context.Context, _ string, c net.Conn, r *bufio.Reader) { s.notify(ctx, c, r) }},
		{Command: Command{Name: "attach", Brief: "the guest's serial console, interactively (Ctrl-] detaches)"}, noArg: true,
			stream: func(s *Server, ctx context.Context, _ string, c net.Conn, r *bufio.Reader) { s.attach(ctx, c, r) }},
	}
	for _, c := range commands {
		inner := c.run
		if inner == nil {
			continue
		}
		c := c
		c.run = func(s *Server, ctx context.Context, arg string) (string, string, error) {
			if c.noArg && arg != "" {
				return "", "", fmt.Errorf("%s takes no argument", c.Name)
			}
			if c.needArg && strings.TrimSpace(arg) == "" {
				return "", "", fmt.Errorf("%s needs an argument: %s %s", c.Name, c.Name, c.Args)
			}
			return inner(s, ctx, arg)
		}
	}
}

// Commands lists the console's commands with their help, in help's order.
func Commands() []Command {
	out := make([]Command, len(commands))
	for i, c := range commands {
		out[i] = c.Command
	}
	return out
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// HelpText is help's reply: one command a line, with its explanation.
func HelpText() string {
	var b strings.Builder
	for _, c := range commands {
		u := c.Name
		if c.Args != "" {
			u += " " + c.Args
		}
		fmt.Fprintf(&b, "  %-20s %s\n", u, c.Brief)
	}
	return b.String()
}

func cmdHelp(*Server, context.Context, string) (string, string, error) {
	return "", HelpText(), nil
}

func cmdVersion(s *Server, ctx context.Context, _ string) (string, string, error) {
	var v struct {
		QEMU struct {
			Major, Minor, Micro int
		} `json:"qemu"`
		Package string `json:"package"`
	}
	if err := s.cfg.QMP.Run(ctx, "query-version", nil, &v); err != nil {
		return "", "", fmt.Errorf("version: %w", err)
	}
	st, err := s.cfg.QMP.QueryStatus(ctx)
	if err != nil {
		return "", "", fmt.Errorf("version: %w", err)
	}
	body := fmt.Sprintf("buildfarm %s\nqemu %d.%d.%d %s\nvm %s: %s\n", buildinfo.String(),
		v.QEMU.Major, v.QEMU.Minor, v.QEMU.Micro, strings.TrimSpace(v.Package), s.cfg.Name, st.Status)
	return "", body, nil
}

func qmpCommand(name, done string) func(*Server, context.Context, string) (string, string, error) {
	return func(s *Server, ctx context.Context, _ string) (string, string, error) {
		if _, err := s.cfg.QMP.Execute(ctx, name, nil); err != nil {
			return "", "", err
		}
		return done, "", nil
	}
}

func cmdRunState(qmpName string) func(*Server, context.Context, string) (string, string, error) {
	return func(s *Server, ctx context.Context, _ string) (string, string, error) {
		if _, err := s.cfg.QMP.Execute(ctx, qmpName, nil); err != nil {
			return "", "", err
		}
		st, err := s.cfg.QMP.QueryStatus(ctx)
		if err != nil {
			return "", "", err
		}
		return st.Status, "", nil
	}
}

func sendKeys(ctx context.Context, c *qmp.Client, keys ...string) error {
	type key struct {
		Type string `json:"type"`
		Data string `json:"data"`
	}
	var ks []key
	for _, k := range keys {
		ks = append(ks, key{"qcode", k})
	}
	_, err := c.Execute(ctx, "send-key", map[string]any{"keys": ks})
	return err
}

func cmdCad(s *Server, ctx context.Context, _ string) (string, string, error) {
	if err := sendKeys(ctx, s.cfg.QMP, "ctrl", "alt", "delete"); err != nil {
		return "", "", err
	}
	return "sent ctrl-alt-delete", "", nil
}

var sysrqKey = regexp.MustCompile(`^[a-z0-9]$`)

func cmdSysrq(s *Server, ctx context.Context, arg string) (string, string, error) {
	if !sysrqKey.MatchString(arg) {
		return "", "", fmt.Errorf("sysrq %q: want one letter or digit", arg)
	}
	if err := sendKeys(ctx, s.cfg.QMP, "alt", "sysrq", arg); err != nil {
		return "", "", err
	}
	return "sent alt-sysrq-" + arg, "", nil
}

func cmdLog(s *Server, ctx context.Context, arg string) (string, string, error) {
	_, err := s.guest.do(ctx, "log", arg)
	return "", "", err
}

func cmdProc(s *Server, ctx context.Context, arg string) (string, string, error) {
	if strings.Contains(arg, "..") || strings.HasPrefix(arg, "/") && !strings.HasPrefix(arg, "/proc/") {
		return "", "", fmt.Errorf("proc %q: want a file under /proc, without ..", arg)
	}
	data, err := s.guest.do(ctx, "proc", arg)
	return "", data, err
}

// devName is a device id QEMU accepts, and not one of its own ("virtio0"
// and the like are the configured disks: config DEV queries them).
var devName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,30}$`)

// blockInfo is an entry of query-block.
type blockInfo struct {
	Device   string `json:"device"`
	QDev     string `json:"qdev"`
	Inserted *struct {
		File     string `json:"file"`
		NodeName string `json:"node-name"`
		Drv      string `json:"drv"`
		RO       bool   `json:"ro"`
		Image    struct {
			BackingFilename string `json:"backing-filename"`
		} `json:"image"`
	} `json:"inserted"`
}

// name is how config and remove call the disk: its drive id, else its
// device id.
func (b blockInfo) name() string {
	if b.Device != "" {
		return b.Device
	}
	if i := strings.Index(b.QDev, "/peripheral/"); i >= 0 {
		return strings.Split(b.QDev[i+len("/peripheral/"):], "/")[0]
	}
	if b.Inserted != nil {
		return b.Inserted.NodeName
	}
	return b.QDev
}

func (b blockInfo) String() string {
	if b.Inserted == nil {
		return fmt.Sprintf("disk %s: empty", b.name())
	}
	s := fmt.Sprintf("disk %s: %s (%s", b.name(), b.Inserted.File, b.Inserted.Drv)
	if b.Inserted.RO {
		s += ", read-only"
	}
	if b.Inserted.Image.BackingFilename != "" {
		s += ", over " + b.Inserted.Image.BackingFilename
	}
	return s + ")"
}

func queryBlock(ctx context.Context, c *qmp.Client) ([]blockInfo, error) {
	var bs []blockInfo
	err := c.Run(ctx, "query-block", nil, &bs)
	return bs, err
}

type chardevInfo struct {
	Label    string `json:"label"`
	Filename string `json:"filename"`
}

func (c chardevInfo) String() string { return fmt.Sprintf("chardev %s: %s", c.Label, c.Filename) }

// nicInfo describes a NIC config added, from QOM.
func nicInfo(ctx context.Context, c *qmp.Client, name string) (string, error) {
	path := "/machine/peripheral/" + name
	get := func(prop string) string {
		var v string
		if c.Run(ctx, "qom-get", map[string]any{"path": path, "property": prop}, &v) != nil {
			return ""
		}
		return v
	}
	netdev := get("netdev")
	if netdev == "" {
		return "", fmt.Errorf("no device %s", name)
	}
	return fmt.Sprintf("nic %s: netdev %s, mac %s", name, netdev, get("mac")), nil
}

func cmdConfig(s *Server, ctx context.Context, arg string) (string, string, error) {
	c := s.cfg.QMP
	name, spec, set := strings.Cut(arg, "=")
	if name != "" && !devName.MatchString(name) {
		return "", "", fmt.Errorf("config %s: bad device name %q (a letter, then letters, digits, _ or -)", arg, name)
	}
	if set {
		return s.hotAdd(ctx, name, spec)
	}
	bs, err := queryBlock(ctx, c)
	if err != nil {
		return "", "", err
	}
	var cds []chardevInfo
	if err := c.Run(ctx, "query-chardev", nil, &cds); err != nil {
		return "", "", err
	}
	if name == "" {
		var b strings.Builder
		for _, d := range bs {
			fmt.Fprintln(&b, d)
		}
		for _, d := range cds {
			fmt.Fprintln(&b, d)
		}
		s.mu.Lock()
		for n, kind := range s.added {
			if kind == "nic" {
				if l, err := nicInfo(ctx, c, n); err == nil {
					fmt.Fprintln(&b, l)
				}
			}
		}
		s.mu.Unlock()
		return "", b.String(), nil
	}
	for _, d := range bs {
		if d.name() == name || d.Inserted != nil && d.Inserted.NodeName == name {
			return d.String(), "", nil
		}
	}
	if name == "serial" {
		name = "serial0"
	}
	for _, d := range cds {
		if d.Label == name {
			return d.String(), "", nil
		}
	}
	l, err := nicInfo(ctx, c, name)
	if err != nil {
		return "", "", fmt.Errorf("config %s: no such disk, chardev or NIC (config lists them)", name)
	}
	return l, "", nil
}

// hotAdd adds the disk or NIC name described by spec.
func (s *Server) hotAdd(ctx context.Context, name, spec string) (string, string, error) {
	c := s.cfg.QMP
	fields := strings.Split(spec, ",")
	first := fields[0]
	switch {
	case first == "user" || strings.HasPrefix(first, "tap:"):
		netdev := map[string]any{"type": "user", "id": name}
		if t, ok := strings.CutPrefix(first, "tap:"); ok {
			netdev = map[string]any{"type": "tap", "id": name, "ifname": t, "script": "no", "downscript": "no"}
		}
		dev := map[string]any{"driver": "virtio-net-pci", "id": name, "netdev": name}
		for _, f := range fields[1:] {
			mac, ok := strings.CutPrefix(f, "mac=")
			if !ok {
				return "", "", fmt.Errorf("config %s=%s: unknown NIC option %q (want mac=MAC)", name, spec, f)
			}
			dev["mac"] = mac
		}
		if _, err := c.Execute(ctx, "netdev_add", netdev); err != nil {
			return "", "", fmt.Errorf("config %s: %w", name, err)
		}
		if err := deviceAdd(ctx, c, dev); err != nil {
			c.Execute(context.WithoutCancel(ctx), "netdev_del", map[string]any{"id": name})
			return "", "", fmt.Errorf("config %s: %w", name, err)
		}
		s.remember(name, "nic")
		return "added nic " + name, "", nil
	case filepath.IsAbs(first):
		format, ro := "raw", false
		for _, f := range fields[1:] {
			switch {
			case f == "readonly" || f == "ro":
				ro = true
			case f == "format=raw" || f == "format=qcow2":
				format = strings.TrimPrefix(f, "format=")
			default:
				return "", "", fmt.Errorf("config %s=%s: unknown disk option %q (want format=raw, format=qcow2 or readonly)", name, spec, f)
			}
		}
		bd := map[string]any{"driver": format, "node-name": name, "read-only": ro,
			"file": map[string]any{"driver": "file", "filename": first, "read-only": ro}}
		if _, err := c.Execute(ctx, "blockdev-add", bd); err != nil {
			return "", "", fmt.Errorf("config %s: %w", name, err)
		}
		if err := deviceAdd(ctx, c, map[string]any{"driver": "virtio-blk-pci", "id": name, "drive": name}); err != nil {
			c.Execute(context.WithoutCancel(ctx), "blockdev-del", map[string]any{"node-name": name})
			return "", "", fmt.Errorf("config %s: %w", name, err)
		}
		s.remember(name, "disk")
		return "added disk " + name + ": " + first, "", nil
	}
	return "", "", fmt.Errorf("config %s=%s: want an absolute disk image path, user, or tap:IFNAME", name, spec)
}

// deviceAdd hot-adds dev on the machine's root bus or, on a machine whose
// root bus takes no hot-plugged device (q35), on the first free one of
// its empty root ports (qemu.HotplugPorts).
func deviceAdd(ctx context.Context, c *qmp.Client, dev map[string]any) error {
	_, err := c.Execute(ctx, "device_add", dev)
	if err == nil || !strings.Contains(err.Error(), "does not support hotplugging") {
		return err
	}
	for _, bus := range qemu.HotplugPorts {
		on := maps.Clone(dev)
		on["bus"] = bus
		if _, err = c.Execute(ctx, "device_add", on); err == nil {
			return nil
		}
	}
	return err
}

func (s *Server) remember(name, kind string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if kind == "" {
		delete(s.added, name)
	} else {
		s.added[name] = kind
	}
}

// cmdRemove unplugs a device: device_del, then, once QEMU reports the
// device gone (DEVICE_DELETED, after the guest let it go), its backend.
func cmdRemove(s *Server, ctx context.Context, name string) (string, string, error) {
	if !devName.MatchString(name) {
		return "", "", fmt.Errorf("remove %q: bad device name", name)
	}
	c := s.cfg.QMP
	s.mu.Lock()
	kind := s.added[name]
	s.mu.Unlock()
	sub := c.Subscribe("DEVICE_DELETED")
	defer sub.Close()
	if _, err := c.Execute(ctx, "device_del", map[string]any{"id": name}); err != nil {
		return "", "", fmt.Errorf("remove %s: %w", name, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		ev, err := sub.Next(wctx)
		if err != nil {
			return "", "", fmt.Errorf("remove %s: the guest has not let the device go (%w); QEMU removes it when it does", name, err)
		}
		var d struct {
			Device string `json:"device"`
		}
		if json.Unmarshal(ev.Data, &d) == nil && d.Device == name {
			break
		}
	}
	var errs []error
	if kind != "nic" {
		_, err := c.Execute(ctx, "blockdev-del", map[string]any{"node-name": name})
		if kind == "disk" && err != nil {
			errs = append(errs, err)
		}
	}
	if kind != "disk" {
		_, err := c.Execute(ctx, "netdev_del", map[string]any{"id": name})
		if kind == "nic" && err != nil {
			errs = append(errs, err)
		}
	}
	s.remember(name, "")
	if err := errors.Join(errs...); err != nil {
		return "", "", fmt.Errorf("remove %s: device gone, backend not: %w", name, err)
	}
	return "removed " + name, "", nil
}
