package hostos

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Unit names of an ordinary host under systemd.
const (
	MonitorUnit = "buildfarm-hostos.service" // the monitor
	AgentSlice  = "buildfarm.slice"          // the agents' scopes, with the host-wide limits
)

// AgentMemoryMargin is what an agent instance's scope may use beyond its
// VM's RAM: QEMU's own memory and the agent's.
const AgentMemoryMargin = 512 << 10 // KiB

// ScopeName is the transient scope unit of agent instance num of
// toolchain tc (without the .scope suffix).
func ScopeName(tc string, num int) string {
	return fmt.Sprintf("buildfarm-agent-%s-%d", tc, num)
}

// ScopeCommand is the systemd-run prefix that puts an agent instance in
// a scope of its own in AgentSlice, limited to its slice: CPUQuota of its
// CPUs and MemoryMax of its RAM plus AgentMemoryMargin. systemd-run
// --scope execs the agent in place, so the monitor still supervises the
// same process, and `systemctl status buildfarm-agent-TC-N.scope` shows
// it.
func ScopeCommand(t *DerivedToolchain, num int) []string {
	return []string{"systemd-run", "--scope", "--quiet", "--collect",
		"--unit=" + ScopeName(t.Name, num), "--slice=" + AgentSlice,
		"--description=buildfarm agent " + strconv.Itoa(num) + " of toolchain " + t.Name,
		"-p", fmt.Sprintf("CPUQuota=%d%%", t.CPUs*100),
		"-p", fmt.Sprintf("MemoryMax=%dK", t.RAMKiB+AgentMemoryMargin),
		"--"}
}

// Install is what `buildfarm hostos install` writes.
type Install struct {
	Root     string // "" or "/": the running system
	Program  string // the buildfarm binary, as the units run it
	Config   string // the configuration file, copied to ConfigPath
	State    string // state directory (default /var/lib/buildfarm)
	Machines string // machines directory (default <State>/machines)
	TFTP     string // TFTP directory (default <State>/tftp)
	// AuthKey is the agents' key (their --auth-key; "" none): Write makes
	// it (EnsureHostKey) under Root when there is none, and sets Key.
	AuthKey string
	Derived *Derived
	Key     *HostKey
}

// ConfigPath is where Install puts the configuration.
const ConfigPath = "/etc/buildfarm/hostos.conf"

// Files returns the files Install writes, by path under the root.
func (in *Install) Files() (map[string][]byte, error) {
	if in.State == "" {
		in.State = "/var/lib/buildfarm"
	}
	if in.Machines == "" {
		in.Machines = filepath.Join(in.State, "machines")
	}
	if in.TFTP == "" {
		in.TFTP = filepath.Join(in.State, "tftp")
	}
	paths := []string{in.Program, in.State, in.Machines, in.TFTP}
	if in.AuthKey != "" {
		paths = append(paths, in.AuthKey)
	}
	for _, p := range paths {
		if !filepath.IsAbs(p) || strings.ContainsAny(p, " \t\n\"'\\%$") {
			return nil, fmt.Errorf("%q: the units need an absolute path without spaces, quotes, %% or $", p)
		}
	}
	conf, err := os.ReadFile(in.Config)
	if err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	cpus, ram := 0, int64(0)
	for _, t := range in.Derived.Toolchains {
		cpus += t.CPUs * t.Instances
		ram += (t.RAMKiB + AgentMemoryMargin) * int64(t.Instances)
	}
	var slice bytes.Buffer
	fmt.Fprintf(&slice, `[Unit]
Description=buildfarm agents (the scopes buildfarm-agent-TOOLCHAIN-N.scope)
Before=slices.target

[Slice]
# The sum of the agent instances' slices (each scope has its own limits).
CPUAccounting=yes
MemoryAccounting=yes
`)
	if cpus > 0 {
		fmt.Fprintf(&slice, "CPUQuota=%d%%\nMemoryMax=%dK\n", cpus*100, ram)
	}
	args := []string{in.Program, "hostos", "monitor", "--config", ConfigPath, "--machines", in.Machines, "--tftp", in.TFTP, "--systemd"}
	if in.AuthKey != "" {
		args = append(args, "--auth-key", in.AuthKey)
	}
	var svc bytes.Buffer
	fmt.Fprintf(&svc, `[Unit]
Description=buildfarm host monitor: toolchains and agent instances
Documentation=man:buildfarm(1)
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
ExecStartPre=/bin/mkdir -p %s %s %s
ExecStart=%s
# The monitor drains and stops its agents (each in a scope of its own in
# %s) when it stops; running builds get their time.
KillMode=mixed
TimeoutStopSec=90
Restart=on-failure
RestartSec=10
Slice=%s

[Install]
WantedBy=multi-user.target
`, in.State, in.Machines, in.TFTP, strings.Join(args, " "), AgentSlice, AgentSlice)
	return map[string][]byte{
		ConfigPath:                           conf,
		"/etc/systemd/system/" + MonitorUnit: svc.Bytes(),
		"/etc/systemd/system/" + AgentSlice:  slice.Bytes(),
	}, nil
}

// Write writes the files under Root, makes the agents' key if there is
// none, and enables the monitor (the link systemctl enable makes).
func (in *Install) Write() ([]string, error) {
	files, err := in.Files()
	if err != nil {
		return nil, err
	}
	root := in.Root
	if root == "" {
		root = "/"
	}
	if in.AuthKey != "" {
		if in.Key, err = EnsureHostKey(filepath.Join(root, in.AuthKey)); err != nil {
			return nil, fmt.Errorf("install: %w", err)
		}
	}
	var wrote []string
	for p, b := range files {
		dst := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return nil, fmt.Errorf("install: %w", err)
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			return nil, fmt.Errorf("install: %w", err)
		}
		wrote = append(wrote, dst)
	}
	wants := filepath.Join(root, "etc/systemd/system/multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	link := filepath.Join(wants, MonitorUnit)
	os.Remove(link)
	if err := os.Symlink("/etc/systemd/system/"+MonitorUnit, link); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	return append(wrote, link), nil
}
