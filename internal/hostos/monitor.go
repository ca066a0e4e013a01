package hostos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/buildfarm/buildfarm/internal/agent"
	"github.com/buildfarm/buildfarm/internal/notify"
	"github.com/buildfarm/buildfarm/internal/proc"
)

// Event kinds the monitor mails the admin about (beside the agent's
// notify.AgentCrashed).
const (
	EventToolchainUpdated  = "toolchain updated"
	EventToolchainFailed   = "toolchain fetch failed"
	EventToolchainDisabled = "toolchain disabled"
	EventOSChanged         = "host OS changed upstream"
	EventAgentsStarted     = "agents started"
	EventHostKey           = "agents' key made"
)

// Monitor supervises a host's agents: it fetches each toolchain, runs its
// agent instances, restarts those that crash, and polls upstream.
type Monitor struct {
	Config     *Derived
	Toolchains *Toolchains // <tftp>/toolchains
	// Agent is the command that runs an agent ("buildfarm", "agent");
	// the monitor appends each instance's options and the controllers.
	Agent []string
	// AgentArgs are more options for every agent (for example --accel,
	// --fake-build).
	AgentArgs []string
	// HostKey, when set, is every agent's --auth-key; when it was made
	// just now, the admin gets its public key by mail to register it.
	HostKey *HostKey
	// Wrap, when set, returns a command prefix for instance num of
	// toolchain t (ScopeCommand under systemd).
	Wrap     func(t *DerivedToolchain, num int) []string
	Machines string // the agents' --machines
	TFTP     string // the agents' --tftp
	// HostOS says the host runs the host OS image: a change upstream
	// (build id or toolchain) reboots it with Reboot. Otherwise a changed
	// toolchain's agents are drained and restarted on it, and a changed
	// build id is only reported. It also says that the set-up made the
	// bridges br0 and br1, so every agent gets its toolchain's --bridge;
	// on an ordinary host only a toolchain whose configuration names a
	// bridge gets it (the admin makes that bridge, with DHCP for the
	// guests), the others' VMs have user-mode networking.
	HostOS bool
	Reboot func(ctx context.Context) error
	// Poll is the pause between two looks upstream (default 5 minutes).
	Poll time.Duration
	// DrainTimeout bounds how long draining agents may take to finish
	// their builds before they are stopped (default 6 hours).
	DrainTimeout time.Duration
	// BackoffMax caps the pause before a crashed agent is restarted
	// (default 5 minutes; the first pause is about a second).
	BackoffMax time.Duration
	Mail       *notify.Mailer // nil: no admin email
	Log        *slog.Logger
	// AgentOutput receives the agents' standard output and error (nil:
	// discarded; their ends are kept for crash reports either way).
	AgentOutput io.Writer

	mu       sync.Mutex
	running  map[string][]*instance // by toolchain
	buildID  string
	draining bool
}

// instance is one agent process under supervision.
type instance struct {
	tc   string
	num  int
	stop context.CancelFunc
	done chan struct{}

	mu    sync.Mutex
	pid   int
	drain bool // draining: the next exit is not a crash
}

// Run supervises until ctx ends (then the agents are stopped) or until
// the host reboots. Its plan:
//
//  1. Read the upstream build id, if buildid_url is set.
//  2. Fetch each toolchain (Toolchains.Update), retrying with back-off; a
//     disabled one gets no agents; mail the admin about each.
//  3. Start each toolchain's instances (one agent process each), with its
//     slice (--cpu, --ram), nice value, controllers and trust; restart
//     one that exits with back-off (NotifyCrash mails the admin).
//  4. Every Poll: look at the build id and at each toolchain's checksums
//     file. A changed build id on the host OS: drain all agents, reboot.
//     A changed toolchain: download it while the agents build on; then on
//     the host OS drain all and reboot; on an ordinary host drain its
//     agents, switch, start them again on the new one.
func (m *Monitor) Run(ctx context.Context) error {
	m.defaults()
	m.running = map[string][]*instance{}
	defer m.stopAll()
	if k := m.HostKey; k != nil {
		m.Log.Info("agents' key", "file", k.Path, "fingerprint", k.Fingerprint, "made", k.Created)
		if k.Created {
			host, _ := os.Hostname()
			m.notify(EventHostKey, "", k.Register(host))
		}
	}
	if m.Config.BuildIDURL != "" { // 1
		for {
			id, err := m.fetchBuildID(ctx)
			if err == nil {
				m.buildID = id
				m.Log.Info("host OS build id", "id", id)
				break
			}
			m.Log.Warn("reading the build id", "err", err)
			if !sleepCtx(ctx, 10*time.Second) {
				return nil
			}
		}
	}
	pending := map[string]bool{}
	for _, t := range m.Config.Toolchains { // 2, 3
		if !m.bringUp(ctx, t) {
			pending[t.Name] = true
		}
	}
	t := time.NewTicker(m.Poll)
	defer t.Stop()
	for { // 4
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if done, err := m.poll(ctx, pending); done || err != nil {
			return err
		}
	}
}

func (m *Monitor) defaults() {
	if m.Log == nil {
		m.Log = slog.New(slog.DiscardHandler)
	}
	if m.Poll == 0 {
		m.Poll = 5 * time.Minute
	}
	if m.DrainTimeout == 0 {
		m.DrainTimeout = 6 * time.Hour
	}
	if m.BackoffMax == 0 {
		m.BackoffMax = 5 * time.Minute
	}
	if m.Reboot == nil {
		m.Reboot = Reboot
	}
}

// bringUp fetches toolchain t and starts its agents; false when that did
// not happen (fetch failed, or disabled): poll tries again.
func (m *Monitor) bringUp(ctx context.Context, t *DerivedToolchain) bool {
	cur, changed, err := m.Toolchains.Update(ctx, t.Toolchain)
	switch {
	case errors.Is(err, ErrDisabled):
		m.Log.Warn("toolchain disabled: no agents", "toolchain", t.Name)
		m.notify(EventToolchainDisabled, t.Name, err.Error())
		return false
	case err != nil:
		if ctx.Err() == nil {
			m.Log.Error("toolchain", "toolchain", t.Name, "err", err)
			m.notify(EventToolchainFailed, t.Name, err.Error())
		}
		return false
	}
	if changed {
		m.notify(EventToolchainUpdated, t.Name, fmt.Sprintf("toolchain %s version %s is in place (%s)", t.Name, cur.Version, cur.Real))
	}
	m.start(ctx, t, cur)
	return true
}

// poll is one look upstream (step 4). done says the monitor should return.
func (m *Monitor) poll(ctx context.Context, pending map[string]bool) (done bool, err error) {
	if m.Config.BuildIDURL != "" {
		id, err := m.fetchBuildID(ctx)
		switch {
		case err != nil:
			m.Log.Warn("reading the build id", "err", err)
		case id != m.buildID && m.HostOS:
			why := fmt.Sprintf("the host OS build id changed from %s to %s: draining the agents, then rebooting", m.buildID, id)
			return true, m.drainAndReboot(ctx, why)
		case id != m.buildID:
			m.notify(EventOSChanged, "", fmt.Sprintf("the host OS build id changed from %s to %s; this host is not booted from it, so nothing happens", m.buildID, id))
			m.buildID = id
		}
	}
	for _, t := range m.Config.Toolchains {
		if pending[t.Name] {
			if m.bringUp(ctx, t) {
				delete(pending, t.Name)
			}
			continue
		}
		cur, err := m.Toolchains.Current(t.Name)
		if err != nil {
			return false, err
		}
		id, err := m.Toolchains.Prepare(ctx, t.Toolchain)
		switch {
		case errors.Is(err, ErrDisabled):
			m.notify(EventToolchainDisabled, t.Name, "draining its agents: "+err.Error())
			m.drain(ctx, t.Name)
			pending[t.Name] = true
			continue
		case err != nil:
			if ctx.Err() != nil {
				return true, nil
			}
			m.Log.Error("toolchain", "toolchain", t.Name, "err", err)
			m.notify(EventToolchainFailed, t.Name, err.Error()+"\nThe agents go on with the toolchain in place.")
			continue
		case id == cur.ID:
			continue
		}
		if m.HostOS {
			why := fmt.Sprintf("toolchain %s changed upstream (%s): draining the agents, then rebooting", t.Name, t.URL)
			return true, m.drainAndReboot(ctx, why)
		}
		m.Log.Info("toolchain changed upstream: draining its agents", "toolchain", t.Name)
		m.drain(ctx, t.Name)
		if ctx.Err() != nil {
			return true, nil
		}
		if !m.bringUp(ctx, t) {
			pending[t.Name] = true
		}
	}
	return false, nil
}

func (m *Monitor) drainAndReboot(ctx context.Context, why string) error {
	m.Log.Info(why)
	m.notify(EventOSChanged, "", why)
	m.mu.Lock()
	names := make([]string, 0, len(m.running))
	for n := range m.running {
		names = append(names, n)
	}
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, n := range names {
		wg.Go(func() { m.drain(ctx, n) })
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	if m.Mail != nil {
		// Give the mailer a moment to send before the host goes.
		sleepCtx(ctx, 2*time.Second)
	}
	m.Log.Info("rebooting")
	return m.Reboot(ctx)
}

func (m *Monitor) fetchBuildID(ctx context.Context) (string, error) {
	b, err := m.Toolchains.Fetch.Get(ctx, m.Config.BuildIDURL, 4096)
	if err != nil {
		return "", fmt.Errorf("buildid_url: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

func (m *Monitor) notify(kind, tc, why string) {
	if m.Mail == nil {
		return
	}
	ev := notify.Event{Kind: kind, Why: why, Look: []string{"journalctl -u buildfarm-hostos", "buildfarm vm list"}}
	if tc != "" {
		ev.Why = "toolchain " + tc + ": " + why
	}
	m.Mail.Notify(ev)
}

// agentArgs returns the agent options of instance num (host-wide, from 1)
// of toolchain t in place as cur.
func (m *Monitor) agentArgs(t *DerivedToolchain, cur *Installed, num int) []string {
	args := []string{
		"--instance", strconv.Itoa(num), "--instances", "1",
		"--cpu", strconv.Itoa(t.CPUs), "--ram", strconv.Itoa(t.RAMMiB()),
		"--toolchain-name", t.Name, "--toolchain-ver", cur.Version, "--toolchain-id", cur.ID,
		"--toolchain", cur.Dir,
	}
	if m.Machines != "" {
		args = append(args, "--machines", m.Machines)
	}
	if m.TFTP != "" {
		args = append(args, "--tftp", m.TFTP)
	}
	for _, fp := range t.ControllerTrust {
		args = append(args, "--trust", fp)
	}
	if br := m.bridge(t); br != "" {
		args = append(args, "--bridge", br)
	}
	if m.HostKey != nil {
		args = append(args, "--auth-key", m.HostKey.Path)
	}
	if c := m.Config.Config; c.SMTPRelay != "" && c.AdminEmail != "" {
		relay := c.SMTPRelay
		if !strings.Contains(relay, ":") {
			relay += ":25"
		}
		args = append(args, "--smtp-relay", relay, "--admin-email", c.AdminEmail)
	}
	args = append(args, m.AgentArgs...)
	return append(args, t.Controllers...)
}

// bridge returns the bridge toolchain t's agents put their VMs on, or ""
// for user-mode networking (see HostOS).
func (m *Monitor) bridge(t *DerivedToolchain) string {
	if m.HostOS || t.BridgeSet {
		return t.Bridge
	}
	return ""
}

// start runs toolchain t's instances.
func (m *Monitor) start(ctx context.Context, t *DerivedToolchain, cur *Installed) {
	// Instance numbers are host-wide and stable across restarts (each
	// instance's spool is <tftp>/spool/<number>): the toolchains' in
	// order, from 1.
	first := 1
	for _, o := range m.Config.Toolchains {
		if o.Name == t.Name {
			break
		}
		first += o.Instances
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range t.Instances {
		ictx, cancel := context.WithCancel(ctx)
		in := &instance{tc: t.Name, num: first + i, stop: cancel, done: make(chan struct{})}
		m.running[t.Name] = append(m.running[t.Name], in)
		args := m.agentArgs(t, cur, in.num)
		go func() {
			defer close(in.done)
			m.supervise(ictx, in, t, args)
		}()
	}
	m.Log.Info("agents started", "toolchain", t.Name, "version", cur.Version, "instances", t.Instances, "cpus", t.CPUs, "ram_mib", t.RAMMiB(), "nice", t.Nice)
}

// supervise runs instance in until ctx ends or it exits after a drain,
// restarting it after a crash with back-off (about a second at first,
// doubling with jitter up to BackoffMax; back to the start after it ran
// for an hour).
func (m *Monitor) supervise(ctx context.Context, in *instance, t *DerivedToolchain, args []string) {
	// Pdeathsig fires when the thread that started the child exits: keep
	// this goroutine on one thread while its agents run.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	log := m.Log.With("toolchain", in.tc, "instance", in.num)
	pause := time.Duration(0)
	for ctx.Err() == nil {
		tail := &proc.Tail{Max: 8 << 10}
		out := io.Writer(tail)
		if m.AgentOutput != nil {
			out = io.MultiWriter(m.AgentOutput, tail)
		}
		argv := append(append([]string{}, m.Agent...), args...)
		if m.Wrap != nil {
			argv = append(m.Wrap(t, in.num), argv...)
		}
		cmd := proc.Command(ctx, argv[0], argv[1:]...)
		cmd.Stdout, cmd.Stderr = out, out
		started := time.Now()
		err := m.runAgent(cmd, in, t.Nice)
		in.mu.Lock()
		drained := in.drain
		in.mu.Unlock()
		if ctx.Err() != nil || drained {
			// A drained agent may have died of the signal before it
			// could handle it: it had no build to finish then.
			log.Info("agent ended", "err", err)
			return
		}
		if err == nil {
			err = errors.New("exited with status 0 without being told to")
		}
		if time.Since(started) > time.Hour {
			pause = 0
		}
		pause = min(max(2*pause, time.Second), m.BackoffMax)
		pause = pause/2 + rand.N(pause/2+1)
		log.Error("agent crashed: restarting", "err", err, "after", pause)
		if m.Mail != nil {
			o := agent.DefaultOptions()
			o.ToolchainName, o.Instance = in.tc, in.num
			agent.NotifyCrash(m.Mail, o, err, tail.String())
		}
		if !sleepCtx(ctx, pause) {
			return
		}
	}
}

// runAgent starts cmd, sets its nice value, and waits for it.
func (m *Monitor) runAgent(cmd *exec.Cmd, in *instance, nice int) error {
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the agent: %w", err)
	}
	in.mu.Lock()
	in.pid = cmd.Process.Pid
	drain := in.drain
	in.mu.Unlock()
	if nice != 0 {
		if err := syscall.Setpriority(syscall.PRIO_PROCESS, cmd.Process.Pid, nice); err != nil {
			m.Log.Warn("setting the agent's nice value", "nice", nice, "err", err)
		}
	}
	if drain { // told to drain while it started
		cmd.Process.Signal(agent.DrainSignal)
	}
	err := cmd.Wait()
	in.mu.Lock()
	in.pid = 0
	in.mu.Unlock()
	return err
}

// drain sends toolchain name's agents DrainSignal and waits for them to
// exit, at most DrainTimeout (then they are stopped).
func (m *Monitor) drain(ctx context.Context, name string) {
	m.mu.Lock()
	ins := m.running[name]
	delete(m.running, name)
	m.mu.Unlock()
	for _, in := range ins {
		in.mu.Lock()
		in.drain = true
		if in.pid > 0 {
			syscall.Kill(in.pid, agent.DrainSignal)
		}
		in.mu.Unlock()
	}
	deadline := time.After(m.DrainTimeout)
	for _, in := range ins {
		select {
		case <-in.done:
		case <-deadline:
			m.Log.Warn("an agent did not finish draining in time: stopping it", "toolchain", name, "instance", in.num, "timeout", m.DrainTimeout)
			in.stop()
			<-in.done
		case <-ctx.Done():
			in.stop()
			<-in.done
		}
	}
	m.Log.Info("agents drained", "toolchain", name, "instances", len(ins))
}

// stopAll stops every agent (SIGTERM to its process group).
func (m *Monitor) stopAll() {
	m.mu.Lock()
	var all []*instance
	for _, ins := range m.running {
		all = append(all, ins...)
	}
	m.running = map[string][]*instance{}
	m.mu.Unlock()
	for _, in := range all {
		in.stop()
	}
	for _, in := range all {
		<-in.done
	}
}

// Reboot syncs the filesystems and restarts the machine (reboot(2); the
// host OS's monitor runs as PID 1 or with CAP_SYS_BOOT).
func Reboot(context.Context) error {
	syscall.Sync()
	if err := syscall.Reboot(syscall.LINUX_REBOOT_CMD_RESTART); err != nil {
		return fmt.Errorf("reboot: %w", err)
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
