package worker

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/buildfarm/buildfarm/internal/tftp"
)

// Mode is what the worker was started to do.
type Mode string

const (
	ModeBuild     Mode = "build"
	ModeBootstrap Mode = "bootstrap"
)

// Config is the worker's configuration.
type Config struct {
	TFTP      string // HOST:PORT of the agent's TFTP server
	Mode      Mode
	Dir       string // the work directory: sources, toolchain, install
	BlockSize int    // TFTP block size
	LogLimit  int    // bytes of each operation's log kept in the result
	// LiveLimit bounds the live log sent of each operation as it runs
	// (0: none is sent); the controller keeps less.
	LiveLimit int64
	// AwaitStart makes a build wait for StartFile before its task
	// (buildfarm.start=wait): the point a warm image is saved at.
	AwaitStart bool
	// StartChannel makes it await the start on the guest channel instead
	// (buildfarm.start=channel, with tap networking: see awaitStart), and
	// Channel is that channel.
	StartChannel bool
	Channel      *Channel
	// StepUID and StepGID are the unprivileged user the steps run as
	// (StepUser in the images); the worker, root, makes its directory
	// theirs. StepUID 0 runs the steps as the worker's own user.
	StepUID, StepGID int

	// Notify, when set, receives the worker's stage messages (event
	// "progress") for the management console (a *Channel).
	Notify Notifier
}

// DefaultConfig is the configuration of a worker in a guest with user-mode
// networking, where the host (the agent's namespace) is 10.0.2.2.
func DefaultConfig() Config {
	return Config{
		TFTP:      "10.0.2.2:23401",
		Mode:      ModeBuild,
		Dir:       "/build",
		BlockSize: 65464,
		LogLimit:  512 << 10,
		LiveLimit: 2 << 20,
		StepUID:   StepUID,
		StepGID:   StepGID,
	}
}

// TFTPOptions are the options of the worker's TFTP client: c's block
// size, lock-step, a 2 s timeout, and the transfer as all the worker does
// while it runs (tftp.Options.Dedicated; the worker is a process of its
// own in a one-CPU guest).
func (c Config) TFTPOptions() tftp.Options {
	return tftp.Options{BlockSize: c.BlockSize, Timeout: 2 * time.Second, Retries: 5, Dedicated: true}
}

// ParseCmdline applies the buildfarm.* parameters of a kernel command line
// to c. Other parameters are ignored; a bad buildfarm.* value is an error
// naming it.
func (c *Config) ParseCmdline(cmdline string) error {
	for _, f := range strings.Fields(cmdline) {
		name, value, ok := strings.Cut(f, "=")
		if !ok || !strings.HasPrefix(name, "buildfarm.") {
			continue
		}
		switch name {
		case "buildfarm.tftp":
			if _, _, err := net.SplitHostPort(value); err != nil {
				value = net.JoinHostPort(value, "23401")
			}
			if _, _, err := net.SplitHostPort(value); err != nil {
				return fmt.Errorf("kernel parameter %s: %w", f, err)
			}
			c.TFTP = value
		case "buildfarm.mode":
			switch Mode(value) {
			case ModeBuild, ModeBootstrap:
				c.Mode = Mode(value)
			default:
				return fmt.Errorf("kernel parameter %s: mode must be build or bootstrap", f)
			}
		case startWaitParam:
			if value != "wait" && value != "channel" {
				return fmt.Errorf("kernel parameter %s: want wait or channel", f)
			}
			c.AwaitStart, c.StartChannel = true, value == "channel"
		case "buildfarm.dir":
			if !strings.HasPrefix(value, "/") {
				return fmt.Errorf("kernel parameter %s: not an absolute path", f)
			}
			c.Dir = value
		case "buildfarm.blksize":
			n, err := strconv.Atoi(value)
			if err != nil || n < 8 || n > 65464 {
				return fmt.Errorf("kernel parameter %s: block size must be 8 to 65464", f)
			}
			c.BlockSize = n
		}
	}
	return nil
}
