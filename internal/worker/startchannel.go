package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The start over the guest channel, for guests on tap networking
// (buildfarm.start=channel, buildfarm.net=dhcp).
//
// A guest restored from a saved state holds the network identity of the
// guest that was saved: its MAC (virtio-net migrates it) and, had it kept
// one, its DHCP lease, which may belong to another VM by now. So the
// restored worker must not learn its start over the network. Before the
// save it takes its interface down and drops its addresses (the saved
// guest has nothing to say on the network, and answers no ARP), and tells
// the console it awaits its start (event AwaitStartEvent, where the agent
// saves it). The agent sends the start as a channel request (op start);
// the worker sets the clock and the random pool as for StartFile, gives
// the interface the start's fresh MAC, brings it up, asks DHCP for a new
// lease (udhcpc with DHCPScript), takes the start's TFTP server, answers
// the request, and asks for its task as a cold-booted worker does.

// AwaitStartEvent is the channel event of a worker that awaits its start
// on the channel; its text names the network interface.
const AwaitStartEvent = "await-start"

// DHCPScript is udhcpc's event script in the guest images. A worker whose
// root is the disk's (the debian machine) finds busybox's ip and udhcpc
// in ToolsDir/bin and the script in ToolsDir, where the guest's init put
// them for a start over the channel.
const (
	DHCPScript = "/etc/buildfarm/udhcpc.script"
	ToolsDir   = "/run/buildfarm"
)

// startHandoff bounds the wait of a start request for a worker that
// takes it: a worker that awaits none fails the request.
const startHandoff = 5 * time.Second

// startRequest is a start from the channel, handed to awaitChannelStart,
// which says on done how applying it went.
type startRequest struct {
	start *Start
	done  chan error
}

// start hands a start request's manifest to the worker and returns what
// applying it gave.
func (c *Channel) start(arg string) error {
	s, err := ParseStart(strings.NewReader(arg), "start request")
	if err != nil {
		return err
	}
	r := startRequest{start: s, done: make(chan error, 1)}
	t := time.NewTimer(startHandoff)
	defer t.Stop()
	select {
	case c.starts <- r:
	case <-t.C:
		return errors.New("start: the worker awaits no start on the channel")
	}
	return <-r.done
}

// awaitChannelStart is awaitStart over the guest channel (see the top of
// this file).
func (w *Worker) awaitChannelStart(ctx context.Context) error {
	c, err := w.attachChannel(ctx)
	if err != nil {
		return fmt.Errorf("%s: no guest channel to await the start on: %w", StartChannelArg, err)
	}
	nic, err := firstNIC()
	if err != nil {
		return err
	}
	// A worker that could not renew its network after the restore must
	// say so now, so that no state is saved.
	script, err := networkTools()
	if err != nil {
		return err
	}
	if err := run(ctx, "ip", "link", "set", "dev", nic, "down"); err != nil {
		return err
	}
	if err := run(ctx, "ip", "-4", "addr", "flush", "dev", nic); err != nil {
		return err
	}
	w.log.Info("awaiting the start on the guest channel", "nic", nic)
	c.Notify(AwaitStartEvent, nic)
	select {
	case r := <-c.starts:
		t0 := time.Now()
		w.applyStart(r.start)
		err := w.renewNetwork(ctx, nic, script, r.start)
		if err == nil && r.start.TFTP != "" {
			w.cfg.TFTP = r.start.TFTP
		}
		w.log.Info("start", "from", "channel", "host-time", r.start.Time.Format(time.RFC3339Nano),
			"mac", r.start.MAC, "tftp", w.cfg.TFTP, "took", time.Since(t0).Round(time.Millisecond), "err", err)
		r.done <- err
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// renewNetwork gives nic the start's MAC, brings it up and asks DHCP for
// a lease with script. A start without a MAC leaves the network down.
func (w *Worker) renewNetwork(ctx context.Context, nic, script string, s *Start) error {
	if s.MAC == "" {
		return nil
	}
	if err := run(ctx, "ip", "link", "set", "dev", nic, "address", s.MAC, "up"); err != nil {
		return err
	}
	return run(ctx, "udhcpc", "-i", nic, "-f", "-q", "-n", "-t", "10", "-T", "1", "-s", script)
}

// toolsPath is the PATH the network's programs run with: ToolsDir/bin
// first.
func toolsPath() string { return ToolsDir + "/bin:" + os.Getenv("PATH") }

// networkTools checks that ip and udhcpc are there, and returns the DHCP
// script: DHCPScript, or the one in ToolsDir.
func networkTools() (string, error) {
	for _, p := range []string{"ip", "udhcpc"} {
		if _, err := lookPath(p, toolsPath()); err != nil {
			return "", fmt.Errorf("%s: the network cannot be renewed after a restore: %w", StartChannelArg, err)
		}
	}
	for _, s := range []string{DHCPScript, ToolsDir + "/udhcpc.script"} {
		if _, err := os.Stat(s); err == nil {
			return s, nil
		}
	}
	return "", fmt.Errorf("%s: the network cannot be renewed after a restore: no DHCP script %s", StartChannelArg, DHCPScript)
}

// lookPath finds the program name in path, as exec.LookPath does in
// $PATH.
func lookPath(name, path string) (string, error) {
	for _, d := range filepath.SplitList(path) {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in %s", name, path)
}

// firstNIC returns the guest's network interface: the first in
// /sys/class/net other than lo, as the guest's init takes it.
func firstNIC() (string, error) {
	es, err := os.ReadDir("/sys/class/net")
	if err != nil {
		return "", fmt.Errorf("network: %w", err)
	}
	for _, e := range es {
		if e.Name() != "lo" {
			return e.Name(), nil
		}
	}
	return "", errors.New("network: no interface besides lo")
}

// run runs a program of the network's (toolsPath) to its end; its error
// carries the output.
func run(ctx context.Context, name string, args ...string) error {
	path, err := lookPath(name, toolsPath())
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), "PATH="+toolsPath())
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
