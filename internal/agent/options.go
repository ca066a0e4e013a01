package agent

import (
	"errors"
	"fmt"
	"time"
)

// Options configure an agent. Their names follow bbot-agent's options.
type Options struct {
	Machines string // the machines directory, with one subdirectory per volume
	TFTP     string // the agent's TFTP directory: one subdirectory per VM
	TFTPPort int    // base port when VMs share the host's network (NoNetNS)
	Instance int    // this agent's instance number on the host, from 1

	ToolchainName string // for example "default" or "stage"
	ToolchainNum  int    // distinguishes toolchains of one name
	ToolchainVer  string
	ToolchainID   string // changes when the toolchain does, forcing re-bootstrap
	Toolchain     string // directory of toolchain files installed at bootstrap (optional)
	Artifacts     string // directory to keep tasks' artifacts in, one subdirectory a task (optional)

	CPU   int    // virtual CPUs per VM
	RAM   int    // MiB per VM
	Accel string // kvm, tcg or auto

	BootstrapStartup time.Duration
	BootstrapTimeout time.Duration
	BootstrapRetries int
	BuildStartup     time.Duration
	BuildTimeout     time.Duration
	BuildRetries     int
	ShutdownTimeout  time.Duration
	RequestTimeout   time.Duration
	RequestInterval  time.Duration // pause between task requests that got no task

	AuthKey string   // private key file for signing challenges
	Trust   []string // repository certificate fingerprints to trust

	FakeBootstrap bool   // record machines as bootstrapped without booting them
	FakeMachine   string // a machine header manifest file instead of enumeration
	FakeBuild     bool   // answer every task with an abort result without a VM
	FakeRequest   string // a task manifest file instead of asking controllers

	DumpMachines bool // print the machines' header manifests and exit
	DumpTask     bool // print the task manifest and exit
	DumpResult   bool // print the result manifest and exit

	NoNetNS bool // run VMs in the host's network namespace (no isolation)
	Once    bool // perform one task and return
}

// DefaultOptions returns bbot-agent's defaults where they apply.
func DefaultOptions() Options {
	return Options{
		Machines:         "/build/machines",
		TFTP:             "/build/tftp",
		TFTPPort:         23400,
		Instance:         1,
		ToolchainName:    "default",
		ToolchainNum:     1,
		CPU:              1,
		RAM:              512,
		Accel:            "auto",
		BootstrapStartup: 300 * time.Second,
		BootstrapTimeout: 3600 * time.Second,
		BootstrapRetries: 2,
		BuildStartup:     240 * time.Second,
		BuildTimeout:     3 * time.Hour,
		BuildRetries:     2,
		ShutdownTimeout:  60 * time.Second,
		RequestTimeout:   300 * time.Second,
		RequestInterval:  60 * time.Second,
	}
}

// Check reports the first option that makes no sense.
func (o *Options) Check() error {
	var errs []error
	if o.Machines == "" {
		errs = append(errs, errors.New("--machines: empty"))
	}
	if o.TFTP == "" {
		errs = append(errs, errors.New("--tftp: empty"))
	}
	if o.Instance < 1 {
		errs = append(errs, fmt.Errorf("--instance %d: must be 1 or more", o.Instance))
	}
	if o.ToolchainName == "" {
		errs = append(errs, errors.New("--toolchain-name: empty"))
	}
	if o.CPU < 1 || o.RAM < 64 {
		errs = append(errs, fmt.Errorf("--cpu %d --ram %d: want at least 1 CPU and 64 MiB", o.CPU, o.RAM))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"--bootstrap-startup", o.BootstrapStartup}, {"--bootstrap-timeout", o.BootstrapTimeout},
		{"--build-startup", o.BuildStartup}, {"--build-timeout", o.BuildTimeout},
		{"--shutdown-timeout", o.ShutdownTimeout},
	} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("%s %v: must be positive", d.name, d.v))
		}
	}
	if o.BootstrapRetries < 0 || o.BuildRetries < 0 {
		errs = append(errs, errors.New("--bootstrap-retries, --build-retries: must not be negative"))
	}
	return errors.Join(errs...)
}

// toolchain is the name machines are bootstrapped under, as in bbot's
// <name>-<toolchain> directories.
func (o *Options) toolchain() string { return o.ToolchainName }
