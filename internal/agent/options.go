package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/buildfarm/buildfarm/internal/console"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/tap"
	"github.com/buildfarm/buildfarm/internal/vmrecord"
)

// Options configure an agent. Their names follow bbot-agent's options.
type Options struct {
	Machines  string // the machines directory, with one subdirectory per volume
	TFTP      string // the agent's TFTP directory: one subdirectory per VM
	TFTPPort  int    // base port when VMs share the host's network (NoNetNS)
	Instance  int    // this agent's instance number on the host, from 1
	Instances int    // tasks performed at once, each in its own VM
	Spool     string // directory of results not yet delivered ("": <TFTP>/spool/<Instance>)

	ToolchainName    string // for example "default" or "stage"
	ToolchainNum     int    // 1 to 9: each toolchain's agents on a host their own (see hostInstance)
	ToolchainVersion string // a standard version, as task requests carry it
	ToolchainID      string // changes when the toolchain does, forcing re-bootstrap
	Toolchain        string // directory of toolchain files installed at bootstrap (optional)
	Artifacts        string // directory to keep tasks' artifacts in, one subdirectory a task (optional)

	CPUs     int    // virtual CPUs per VM (each of Instances VMs gets this many)
	MemoryMB int    // MiB per VM (each of Instances VMs gets this much)
	Accel    string // kvm, tcg or auto
	Start    string // how task VMs start: warm, cold or auto (see warm.go)

	BootstrapStartup time.Duration
	BootstrapTimeout time.Duration
	BootstrapRetries int
	BuildStartup     time.Duration
	BuildTimeout     time.Duration
	BuildRetries     int
	ShutdownTimeout  time.Duration
	RequestTimeout   time.Duration // one exchange with a controller, beyond LongPoll
	RequestInterval  time.Duration // the longest pause between rounds of task requests (back-off cap)
	LongPoll         time.Duration // how long a controller may hold a task request (0: no long polling)
	MaxArchive       int64         // bytes: the largest sources archive downloaded

	AuthKey string   // private key file for signing challenges
	CA      string   // PEM file of CA certificates for HTTPS, beside the system's roots
	Metrics string   // address to serve Prometheus metrics on (http://ADDR/metrics; "" none)
	Trust   []string // repository certificate fingerprints to trust

	FakeBootstrap bool   // record machines as bootstrapped without booting them
	FakeMachine   string // a machine header manifest file instead of enumeration
	FakeBuild     bool   // answer every task with an abort result without a VM
	FakeRequest   string // a task manifest file instead of asking controllers

	DumpMachines bool // print the machines' header manifests and exit
	DumpTask     bool // print the task manifest and exit
	DumpResult   bool // print the result manifest and exit

	// Suspended VMs and the consoles (suspend.go).
	Registry     string        // directory of the host's VM records
	ConsoleLinks string        // directory of the predictable console links
	SuspendLimit time.Duration // how long a suspended VM is kept
	SuspendMax   int           // suspended VMs a host keeps at most; past it the oldest is destroyed

	SMTPRelay  string // HOST:PORT of the SMTP relay for admin email ("": none)
	AdminEmail string // the admin's address

	NoNetNS bool // run VMs in the host's network namespace (no isolation)
	// Bridge puts each VM on this host bridge through a tap of its own,
	// configured by DHCP, instead of user-mode networking in a namespace
	// of its own ("": user networking; see bridge.go). Needs root.
	Bridge string
	Once   bool // perform one task and return
}

// DefaultOptions returns bbot-agent's defaults where they apply.
func DefaultOptions() Options {
	return Options{
		Machines:         "/build/machines",
		TFTP:             "/build/tftp",
		TFTPPort:         23400,
		Instance:         1,
		Instances:        1,
		ToolchainName:    "default",
		ToolchainNum:     1,
		ToolchainVersion: DefaultToolchainVersion,
		CPUs:             1,
		MemoryMB:         512,
		Accel:            "auto",
		Start:            StartAuto,
		BootstrapStartup: 300 * time.Second,
		BootstrapTimeout: 3600 * time.Second,
		BootstrapRetries: 2,
		BuildStartup:     240 * time.Second,
		BuildTimeout:     3 * time.Hour,
		BuildRetries:     2,
		ShutdownTimeout:  60 * time.Second,
		RequestTimeout:   60 * time.Second,
		RequestInterval:  60 * time.Second,
		LongPoll:         30 * time.Second,
		MaxArchive:       256 << 20,
		Registry:         vmrecord.DefaultDir,
		ConsoleLinks:     console.DefaultLinkDir,
		SuspendLimit:     24 * time.Hour,
		SuspendMax:       DefaultSuspendMax,
	}
}

// DefaultSuspendMax is --suspend-max's default: each suspended VM holds
// its memory (--ram) and its snapshot's changes.
const DefaultSuspendMax = 4

// DefaultToolchainVersion is --toolchain-ver's default: a standard version,
// as task requests need one.
const DefaultToolchainVersion = "0.1.0"

// Check reports the first option that makes no sense.
func (o *Options) Check() error {
	var errs []error
	if o.Machines == "" {
		errs = append(errs, errors.New("--machines: empty"))
	}
	if o.TFTP == "" {
		errs = append(errs, errors.New("--tftp: empty"))
	}
	if o.Instance < 1 || o.Instance > 99 {
		errs = append(errs, fmt.Errorf("--instance %d: must be 1 to 99", o.Instance))
	}
	if o.ToolchainNum < 1 || o.ToolchainNum > 9 {
		errs = append(errs, fmt.Errorf("--toolchain-num %d: must be 1 to 9", o.ToolchainNum))
	}
	if last := o.SlotPort(o.Instances - 1); o.TFTPPort < 1 || last > 65535 {
		errs = append(errs, fmt.Errorf("--tftp-port %d: with --toolchain-num %d, --instance %d and --instances %d the ports run to %d, past 65535", o.TFTPPort, o.ToolchainNum, o.Instance, o.Instances, last))
	}
	if err := checkTrust(o.Trust); err != nil {
		errs = append(errs, err)
	}
	if o.Instances < 1 {
		errs = append(errs, fmt.Errorf("--instances %d: must be 1 or more", o.Instances))
	}
	if o.Once && o.Instances > 1 {
		errs = append(errs, fmt.Errorf("--once with --instances %d: --once performs one task, so with one instance only", o.Instances))
	}
	if o.ToolchainName == "" {
		errs = append(errs, errors.New("--toolchain-name: empty"))
	}
	if err := checkTaskRequest(o); err != nil {
		errs = append(errs, err)
	}
	if o.CPUs < 1 || o.MemoryMB < 64 {
		errs = append(errs, fmt.Errorf("--cpu %d --ram %d: want at least 1 CPU and 64 MiB", o.CPUs, o.MemoryMB))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"--bootstrap-startup", o.BootstrapStartup}, {"--bootstrap-timeout", o.BootstrapTimeout},
		{"--build-startup", o.BuildStartup}, {"--build-timeout", o.BuildTimeout},
		{"--shutdown-timeout", o.ShutdownTimeout}, {"--suspend-limit", o.SuspendLimit},
		{"--request-timeout", o.RequestTimeout}, {"--request-interval", o.RequestInterval},
	} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("%s %v: must be positive", d.name, d.v))
		}
	}
	if o.Start != StartWarm && o.Start != StartCold && o.Start != StartAuto {
		errs = append(errs, fmt.Errorf("--start %q: want warm, cold or auto", o.Start))
	}
	if o.LongPoll < 0 {
		errs = append(errs, fmt.Errorf("--long-poll %v: must not be negative (0 disables long polling)", o.LongPoll))
	}
	if o.SuspendMax < 1 {
		errs = append(errs, fmt.Errorf("--suspend-max %d: must be 1 or more", o.SuspendMax))
	}
	if o.Registry == "" {
		errs = append(errs, errors.New("--registry: empty"))
	}
	if o.ConsoleLinks == "" {
		errs = append(errs, errors.New("--console-links: empty"))
	}
	if (o.SMTPRelay == "") != (o.AdminEmail == "") {
		errs = append(errs, fmt.Errorf("--smtp-relay %q --admin-email %q: give both, or neither (no email)", o.SMTPRelay, o.AdminEmail))
	}
	if o.Bridge != "" {
		if os.Geteuid() != 0 {
			errs = append(errs, fmt.Errorf("--bridge %s: needs root, to make each VM's tap device", o.Bridge))
		} else if _, err := tap.Bridge(o.Bridge); err != nil {
			errs = append(errs, fmt.Errorf("--bridge: %w", err))
		}
	}
	if o.MaxArchive <= 0 {
		errs = append(errs, fmt.Errorf("--max-archive %d: must be positive", o.MaxArchive))
	}
	for _, r := range []struct {
		name string
		v    int
	}{{"--bootstrap-retries", o.BootstrapRetries}, {"--build-retries", o.BuildRetries}} {
		if r.v < 0 {
			errs = append(errs, fmt.Errorf("%s %d: must not be negative (0: no retry)", r.name, r.v))
		}
	}
	return errors.Join(errs...)
}

// checkTaskRequest checks the fields of o that go into task requests as
// the manifest parser checks them (a controller would refuse them).
func checkTaskRequest(o *Options) error {
	req := manifest.TaskRequest{Agent: "agent", ToolchainName: o.ToolchainName, ToolchainVersion: o.ToolchainVersion,
		Machines: []manifest.MachineHeader{{ID: "id", Name: "name", Summary: "summary"}}}
	if o.ToolchainName == "" {
		req.ToolchainName = "default"
	}
	if _, err := manifest.ParseTaskRequest(req.Manifests(), "options", manifest.Strict); err != nil {
		return fmt.Errorf("--toolchain-name %q --toolchain-ver %q: %w", o.ToolchainName, o.ToolchainVersion, err)
	}
	return nil
}

// spoolDir is where results wait to be delivered.
func (o *Options) spoolDir() string {
	if o.Spool != "" {
		return o.Spool
	}
	return filepath.Join(o.TFTP, "spool", fmt.Sprint(o.hostInstance()))
}

// hostInstance is the agent's number among all the agents of a host, of
// every toolchain: the instance number, plus 100 for each toolchain
// number above 1 (bbot's --toolchain-num offsets ports and interfaces so).
// It numbers what agents of several toolchains would otherwise share on
// one host: the TFTP port, the TFTP directory and the spool.
func (o *Options) hostInstance() int { return 100*(o.ToolchainNum-1) + o.Instance }

// SlotPort is the TFTP port of the VM of slot (from 0): --tftp-port plus
// the host-wide instance number (see hostInstance) plus slotPorts for
// each slot. It matters only when VMs share the host's network
// (--no-netns).
func (o *Options) SlotPort(slot int) int { return o.TFTPPort + o.hostInstance() + slotPorts*slot }

// slotPorts is the TFTP port offset of each slot above the first.
const slotPorts = 1000

// checkTrust checks --trust values as a task manifest's trust field is
// checked: "yes" or a SHA256 certificate fingerprint.
func checkTrust(trust []string) error {
	if len(trust) == 0 {
		return nil
	}
	t := manifest.Task{Name: "hello", Version: "1.0.0", RepositoryURL: "https://example.org/hello.git", Machine: "m", Target: "x86_64-linux-gnu", Trust: trust}
	if _, err := manifest.ParseTask(t.Manifest(), "options", manifest.Strict); err != nil {
		return fmt.Errorf("--trust %s: %w", strings.Join(trust, ","), err)
	}
	return nil
}

// toolchain is the name machines are bootstrapped under, as in bbot's
// <name>-<toolchain> directories.
func (o *Options) toolchain() string { return o.ToolchainName }
