package hostos

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/buildfarm/buildfarm/internal/machine"
	"github.com/buildfarm/buildfarm/internal/netns"
	"github.com/buildfarm/buildfarm/internal/proc"
)

// Setup is the host set-up when running as the host OS (before the
// monitor): storage, network, SSH, and the clean-up of what the last boot
// left.
type Setup struct {
	Config *Config
	Root   string // "/" on the host OS; tests use a directory
	Log    *slog.Logger
	// DHCPScript is the udhcpc script that configures an interface
	// (address, route, DNS, hostname from the lease).
	DHCPScript string
}

// Result is what the set-up found.
type Result struct {
	Storage   *Storage
	Interface string // the Ethernet interface on br0
	Hostname  string
}

// PrivateNet is the private bridge br1's network: the host is .1, guests
// get addresses from DHCP, and their traffic goes out through NAT.
const (
	PrivateAddr  = "172.31.0.1/16"
	PrivateStart = "172.31.1.1"
	PrivateEnd   = "172.31.254.254"
)

// Run sets the host up, in order:
//
//  1. Storage by label (MountStorage); without a machine volume, the
//     error is ErrNoMachines (the caller shows it and stops at a shell).
//  2. Stray machine snapshots and unfinished bootstraps of the last boot
//     go (nothing survives a reboot to own them).
//  3. Network: the first Ethernet interface with carrier joins the public
//     bridge br0, which gets its address by DHCP; the hostname comes from
//     the lease, or is build-<MAC>. The private bridge br1 gets
//     PrivateAddr, DHCP for guests (busybox udhcpd; the host's name
//     servers are theirs) and NAT (iptables, when present), and is checked
//     as a guest sees it (checkPrivate).
//  4. SSH: dropbear, letting in user build with the configured key
//     only (no passwords), when a key is configured.
func (s *Setup) Run(ctx context.Context) (*Result, error) {
	r := &Result{}
	labels, err := FindLabels()
	if err != nil {
		return nil, err
	}
	if r.Storage, err = MountStorage(ctx, s.Log, s.Root, labels); err != nil { // 1
		return nil, err
	}
	gone, err := (&machine.Store{Dir: r.Storage.Machines, Log: s.Log}).CleanStray(ctx) // 2
	if err != nil {
		s.Log.Warn("cleaning up stray snapshots", "err", err)
	}
	for _, d := range gone {
		s.Log.Info("removed a stray snapshot", "dir", d)
	}
	if r.Interface, r.Hostname, err = s.network(ctx); err != nil { // 3
		return r, err
	}
	if s.Config.SSHKey != "" { // 4
		if err := s.ssh(ctx); err != nil {
			return r, err
		}
	}
	return r, nil
}

// FirstEthernet returns the first Ethernet interface (by name) with a
// device behind it that has carrier, bringing each up to look; it waits
// up to wait for one.
func FirstEthernet(ctx context.Context, wait time.Duration) (name, mac string, err error) {
	deadline := time.Now().Add(wait)
	for {
		es, err := os.ReadDir("/sys/class/net")
		if err != nil {
			return "", "", fmt.Errorf("network interfaces: %w", err)
		}
		for _, e := range es {
			dir := filepath.Join("/sys/class/net", e.Name())
			if typ, _ := os.ReadFile(filepath.Join(dir, "type")); strings.TrimSpace(string(typ)) != "1" {
				continue // not ARPHRD_ETHER
			}
			if _, err := os.Stat(filepath.Join(dir, "device")); err != nil {
				continue // virtual: a bridge, veth, tap
			}
			proc.Run(ctx, nil, "ip", "link", "set", e.Name(), "up")
			if c, _ := os.ReadFile(filepath.Join(dir, "carrier")); strings.TrimSpace(string(c)) == "1" {
				addr, _ := os.ReadFile(filepath.Join(dir, "address"))
				return e.Name(), strings.TrimSpace(string(addr)), nil
			}
		}
		if time.Now().After(deadline) {
			return "", "", errors.New("no Ethernet interface with carrier: is a cable plugged in?")
		}
		select {
		case <-ctx.Done():
			return "", "", ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (s *Setup) network(ctx context.Context) (string, string, error) {
	run := func(args ...string) error { return proc.Run(ctx, nil, args[0], args[1:]...) }
	run("ip", "link", "set", "lo", "up")
	eth, mac, err := FirstEthernet(ctx, 30*time.Second)
	if err != nil {
		return "", "", err
	}
	s.Log.Info("network", "interface", eth, "mac", mac)
	steps := [][]string{
		{"brctl", "addbr", "br0"},
		{"brctl", "addif", "br0", eth},
		{"ip", "link", "set", "br0", "up"},
		{"brctl", "addbr", "br1"},
		{"ip", "addr", "add", PrivateAddr, "dev", "br1"},
		{"ip", "link", "set", "br1", "up"},
	}
	for _, st := range steps {
		if err := run(st...); err != nil {
			return eth, "", fmt.Errorf("network: %w", err)
		}
	}
	// The bridge takes its port's MAC, so DHCP sees the host as before.
	host := "build-" + strings.ReplaceAll(mac, ":", "")
	if err := os.WriteFile("/proc/sys/kernel/hostname", []byte(host), 0o644); err != nil {
		s.Log.Warn("hostname", "err", err)
	}
	// udhcpc goes to the background once it has a lease, and renews it.
	args := []string{"udhcpc", "-i", "br0", "-n", "-t", "10", "-T", "3", "-x", "hostname:" + host}
	if s.DHCPScript != "" {
		args = append(args, "-s", s.DHCPScript)
	}
	if err := daemon(ctx, args...); err != nil {
		return eth, "", fmt.Errorf("DHCP on br0 (%s): %w", eth, err)
	}
	if b, err := os.ReadFile("/proc/sys/kernel/hostname"); err == nil {
		host = strings.TrimSpace(string(b)) // the lease's, if it named one
	}
	s.Log.Info("network up", "bridge", "br0", "hostname", host)
	// The private bridge: forwarding, NAT, DHCP for guests.
	os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	if _, err := exec.LookPath("iptables"); err == nil {
		if err := run("iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "172.31.0.0/16", "!", "-o", "br1", "-j", "MASQUERADE"); err != nil {
			s.Log.Warn("NAT for br1", "err", err)
		} else if out, err := proc.Output(ctx, "iptables", "-t", "nat", "-S", "POSTROUTING"); err != nil {
			s.Log.Warn("NAT for br1: listing the rules", "err", err)
		} else {
			// What the kernel holds, read back, for the boot log.
			for _, l := range strings.Split(string(out), "\n") {
				if strings.Contains(l, "MASQUERADE") {
					s.Log.Info("NAT for br1", "rule", l)
				}
			}
		}
	} else {
		s.Log.Warn("no iptables: guests on br1 get no NAT")
	}
	conf := filepath.Join(s.Root, "run", "udhcpd.br1.conf")
	os.MkdirAll(filepath.Dir(conf), 0o755)
	leases := filepath.Join(s.Root, "run", "udhcpd.br1.leases")
	os.WriteFile(leases, nil, 0o644)
	// The guests' name servers are the host's (from br0's lease), which
	// they reach through the NAT: the host runs none of its own.
	c := fmt.Sprintf("interface br1\nstart %s\nend %s\nlease_file %s\noption subnet 255.255.0.0\noption router 172.31.0.1\n",
		PrivateStart, PrivateEnd, leases)
	if dns := nameservers(filepath.Join(s.Root, "etc", "resolv.conf")); len(dns) > 0 {
		c += "option dns " + strings.Join(dns, " ") + "\n"
	} else {
		s.Log.Warn("no name server in resolv.conf: guests on br1 get none")
	}
	if err := os.WriteFile(conf, []byte(c), 0o644); err != nil {
		return eth, host, err
	}
	// udhcpd makes sure an address is free by ARP before it offers it, and
	// waits 2 s for an answer by default: every guest's boot, cold or
	// restored, would wait that long for its lease. On a bridge of the
	// host's own making, an answer comes in well under 100 ms.
	if err := daemon(ctx, "udhcpd", "-a", "100", conf); err != nil {
		s.Log.Warn("DHCP for br1", "err", err)
	} else if lease, fetched, err := s.checkPrivate(ctx); err != nil {
		s.Log.Warn("br1 as a guest sees it", "err", err)
	} else {
		s.Log.Info("br1 as a guest sees it", "lease", lease, "fetched", fetched)
	}
	return eth, host, nil
}

// checkPrivate looks at the private bridge br1 as a guest sees it: a veth
// on br1 whose other end is in a network namespace of its own gets an
// address from udhcpd, and from there fetches the first http or https URL
// of the configuration (the build id, or a toolchain's checksums file)
// through the NAT (its name, if any, is looked up from the host). It
// returns the lease and the URL fetched ("" when there is none to fetch),
// and leaves nothing behind.
func (s *Setup) checkPrivate(ctx context.Context) (lease, fetched string, err error) {
	const host, guest = "bfchk0", "bfchk1"
	run := func(args ...string) error { return proc.Run(ctx, nil, args[0], args[1:]...) }
	script := filepath.Join(s.Root, "run", "udhcpc.check")
	// udhcpc runs it in the namespace with the lease in its environment.
	body := "#!/bin/sh\n[ \"$1\" = bound ] || exit 0\n" +
		"ip addr add \"$ip/${mask:-16}\" dev \"$interface\" && ip route add default via \"$router\" && echo \"lease $ip dns $dns\"\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		return "", "", err
	}
	defer os.Remove(script)
	ns, err := netns.New(ctx)
	if err != nil {
		return "", "", err
	}
	// Deleting the namespace deletes its end of the veth, and so the pair.
	defer ns.Delete(context.WithoutCancel(ctx))
	for _, st := range [][]string{
		{"ip", "link", "add", host, "type", "veth", "peer", "name", guest, "netns", ns.Name},
		{"brctl", "addif", "br1", host},
		{"ip", "link", "set", host, "up"},
		{"ip", "-n", ns.Name, "link", "set", guest, "up"},
	} {
		if err := run(st...); err != nil {
			return "", "", err
		}
	}
	out, err := ns.Output(ctx, "udhcpc", "-i", guest, "-n", "-q", "-R", "-f", "-t", "5", "-T", "2", "-s", script)
	if err != nil {
		return "", "", fmt.Errorf("no DHCP lease on br1: %w", err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(l, "lease "); ok {
			lease = strings.TrimSpace(rest) // ADDRESS dns SERVERS
		}
	}
	if lease == "" {
		return "", "", fmt.Errorf("udhcpc on br1 printed no lease: %q", out)
	}
	urls := []string{s.Config.BuildIDURL}
	for _, t := range s.Config.Toolchains {
		urls = append(urls, t.URL)
	}
	for _, u := range urls {
		if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
			continue
		}
		// The transport dials in goroutines of its own: each dial enters
		// the namespace.
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.DialContext = func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = ns.Do(func() error {
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}
		f := &Fetcher{HTTP: &http.Client{Transport: t, Timeout: 20 * time.Second}}
		_, err := f.Get(ctx, u, 1<<20)
		t.CloseIdleConnections()
		if err != nil {
			return lease, "", fmt.Errorf("lease %s, but no %s through the NAT: %w", lease, u, err)
		}
		return lease, u, nil
	}
	return lease, "", nil
}

// nameservers returns the IPv4 name servers of the resolv.conf at path.
func nameservers(path string) []string {
	b, _ := os.ReadFile(path)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "nameserver" {
			if ip := net.ParseIP(f[1]); ip != nil && ip.To4() != nil {
				out = append(out, f[1])
			}
		}
	}
	return out
}

// ssh starts dropbear with user build's authorized key: no password
// logins, and no one else has a key.
func (s *Setup) ssh(ctx context.Context) error {
	home := filepath.Join(s.Root, "home", "build")
	if err := os.MkdirAll(filepath.Join(home, ".ssh"), 0o700); err != nil {
		return fmt.Errorf("ssh: %w", err)
	}
	if err := os.WriteFile(filepath.Join(home, ".ssh", "authorized_keys"), []byte(s.Config.SSHKey+"\n"), 0o600); err != nil {
		return fmt.Errorf("ssh: %w", err)
	}
	for _, p := range []string{home, filepath.Join(home, ".ssh"), filepath.Join(home, ".ssh", "authorized_keys")} {
		os.Chown(p, 1000, 1000)
	}
	if err := appendLine(filepath.Join(s.Root, "etc", "passwd"), "build:x:1000:1000:build:/home/build:/bin/sh"); err != nil {
		return fmt.Errorf("ssh: %w", err)
	}
	appendLine(filepath.Join(s.Root, "etc", "group"), "build:x:1000:")
	appendLine(filepath.Join(s.Root, "etc", "shadow"), "build:*:1:0:99999:7:::")
	os.MkdirAll(filepath.Join(s.Root, "etc", "dropbear"), 0o700)
	// -R: make host keys as needed; -s: no passwords; -w: no root.
	if err := daemon(ctx, "dropbear", "-R", "-s", "-w"); err != nil {
		return fmt.Errorf("ssh: %w", err)
	}
	s.Log.Info("ssh: dropbear lets in user build with the configured key")
	return nil
}

// daemon runs a program that puts itself in the background, and returns
// when its foreground part exits. Its output goes to standard error, not
// through a pipe that the background part would hold open.
func daemon(ctx context.Context, args ...string) error {
	cmd := proc.Command(ctx, args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w", strings.Join(args, " "), err)
	}
	return nil
}

func appendLine(path, line string) error {
	b, _ := os.ReadFile(path)
	name, _, _ := strings.Cut(line, ":")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, name+":") {
			return nil
		}
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = fmt.Fprintln(f, line)
	return err
}
