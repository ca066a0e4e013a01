package hostos

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Prefix starts every host OS parameter on the kernel command line.
const Prefix = "buildos."

// DefaultToolchain is the toolchain of a parameter without a name suffix.
const DefaultToolchain = "default"

// Bridges are the values of the bridge parameter: br0 is the public bridge
// (guests get addresses from the LAN), br1 the private one (NAT, with
// DHCP for the guests from the host).
var Bridges = []string{"br0", "br1"}

// Config is a host's configuration: the host-wide settings and the
// toolchains, each with its agents' settings.
type Config struct {
	SMTPRelay  string `json:"smtp_relay,omitempty"`  // HOST[:PORT] of the SMTP relay for admin email
	AdminEmail string `json:"admin_email,omitempty"` // the admin's address
	BuildIDURL string `json:"buildid_url,omitempty"` // the upstream buildos-buildid, polled
	SSHKey     string `json:"ssh_key,omitempty"`     // the public key that logs in as user build

	CPUOvercommit Ratio `json:"cpu_overcommit"`
	RAMOvercommit Ratio `json:"ram_overcommit"`
	CPUReserved   int   `json:"cpu_reserved"`    // CPUs kept for the host itself
	RAMReserved   int   `json:"ram_reserved_gb"` // GiB kept for the host itself

	Toolchains []*Toolchain `json:"toolchains"` // sorted by name

	// Warnings are about parameters that were ignored (unknown ones).
	Warnings []string `json:"warnings,omitempty"`
}

// Toolchain is one toolchain's settings: where its checksums file is and
// how its agents run.
type Toolchain struct {
	Name            string   `json:"name"`
	URL             string   `json:"toolchain_url"`   // the checksums file (.sha256 or .sha512)
	Trust           string   `json:"toolchain_trust"` // fingerprint, or "" (written as "no")
	Instances       int      `json:"instances"`       // agent instances
	Nice            int      `json:"nice"`            // -20..19
	Bridge          string   `json:"bridge"`          // br0 or br1
	Controllers     []string `json:"controllers"`
	ControllerTrust []string `json:"controller_trust"` // repository certificate fingerprints
	// BridgeSet says the configuration names the bridge rather than
	// leaving it br1 by default: on an ordinary host only then do the
	// agents get --bridge (see Monitor.agentArgs).
	BridgeSet bool `json:"-"`
}

// Ratio is an overcommit ratio such as 3/2.
type Ratio struct{ Num, Den int }

func (r Ratio) String() string {
	if r.Den == 1 {
		return strconv.Itoa(r.Num)
	}
	return fmt.Sprintf("%d/%d", r.Num, r.Den)
}

// MarshalText writes the ratio as N/D (or N).
func (r Ratio) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// ParseRatio parses N/D or N, both positive integers.
func ParseRatio(s string) (Ratio, error) {
	n, d, slash := strings.Cut(s, "/")
	if !slash {
		d = "1"
	}
	num, err1 := strconv.Atoi(n)
	den, err2 := strconv.Atoi(d)
	if err1 != nil || err2 != nil || num <= 0 || den <= 0 || num > 1000 || den > 1000 {
		return Ratio{}, fmt.Errorf("%q is not a ratio N/D of positive integers up to 1000 (such as 3/2)", s)
	}
	return Ratio{num, den}, nil
}

// DefaultConfig is the configuration with no parameters: no overcommit,
// no CPU and 4 GiB of RAM kept for the host, no toolchains.
func DefaultConfig() *Config {
	return &Config{CPUOvercommit: Ratio{1, 1}, RAMOvercommit: Ratio{1, 1}, RAMReserved: 4}
}

// Toolchain returns the toolchain named name, or nil.
func (c *Config) Toolchain(name string) *Toolchain {
	for _, t := range c.Toolchains {
		if t.Name == name {
			return t
		}
	}
	return nil
}

// The parameters, without the prefix: host-wide ones take no suffix,
// per-toolchain ones an optional .<toolchain>.
var (
	hostParams      = []string{"smtp_relay", "admin_email", "buildid_url", "ssh_key", "cpu_overcommit", "ram_overcommit", "cpu_reserved", "ram_reserved"}
	toolchainParams = []string{"toolchain_url", "toolchain_trust", "instances", "nice", "bridge", "controller_url", "controller_trust"}
	// labelParams name storage labels (see storage.go), not settings; they
	// are accepted and ignored so that a label pasted in does not warn.
	labelParams = []string{"state", "machines"}
)

// Param is one name=value setting, with where it came from for messages.
type Param struct {
	Name  string // without the prefix, for example "nice.stage"
	Value string
	Where string // "kernel command line" or FILE:LINE
}

// build makes a configuration from params, in order (a later setting of a
// parameter overrides an earlier one; controller_url and controller_trust
// add up). It returns the first bad value as an error naming the parameter.
func build(params []Param) (*Config, error) {
	c := DefaultConfig()
	tc := func(name string) *Toolchain {
		if t := c.Toolchain(name); t != nil {
			return t
		}
		t := &Toolchain{Name: name, Instances: 1, Bridge: "br1", Controllers: []string{}, ControllerTrust: []string{}}
		c.Toolchains = append(c.Toolchains, t)
		return t
	}
	for _, p := range params {
		base, suffix, hasSuffix := strings.Cut(p.Name, ".")
		full := Prefix + p.Name
		bad := func(format string, args ...any) error {
			return fmt.Errorf("%s: %s: %s", p.Where, full, fmt.Sprintf(format, args...))
		}
		switch {
		case slices.Contains(labelParams, base):
			continue
		case slices.Contains(hostParams, base):
			if hasSuffix {
				return nil, bad("a host-wide parameter takes no toolchain name (%s)", Prefix+base)
			}
			if err := c.setHost(base, p.Value); err != nil {
				return nil, bad("%v", err)
			}
			continue
		case !slices.Contains(toolchainParams, base):
			c.Warnings = append(c.Warnings, fmt.Sprintf("%s: unknown parameter %s ignored", p.Where, full))
			continue
		}
		name := DefaultToolchain
		if hasSuffix {
			if err := checkToolchainName(suffix); err != nil {
				return nil, bad("%v", err)
			}
			name = suffix
		}
		t := tc(name)
		if err := t.set(base, p.Value); err != nil {
			return nil, bad("%v", err)
		}
	}
	slices.SortFunc(c.Toolchains, func(a, b *Toolchain) int { return strings.Compare(a.Name, b.Name) })
	for _, t := range c.Toolchains {
		sfx := ""
		if t.Name != DefaultToolchain {
			sfx = "." + t.Name
		}
		if t.URL == "" {
			return nil, fmt.Errorf("%stoolchain_url%s: missing: toolchain %s has settings but no checksums file URL", Prefix, sfx, t.Name)
		}
		if len(t.Controllers) == 0 {
			return nil, fmt.Errorf("%scontroller_url%s: missing: toolchain %s has no controller for its agents to serve", Prefix, sfx, t.Name)
		}
	}
	return c, nil
}

func (c *Config) setHost(name, v string) error {
	var err error
	switch name {
	case "smtp_relay":
		err = checkHostPort(v)
		c.SMTPRelay = v
	case "admin_email":
		if !strings.Contains(v, "@") || strings.ContainsAny(v, " \t<>") {
			err = fmt.Errorf("%q is not an email address", v)
		}
		c.AdminEmail = v
	case "buildid_url":
		err = checkURL(v)
		c.BuildIDURL = v
	case "ssh_key":
		if f := strings.Fields(v); len(f) < 2 || !strings.HasPrefix(f[0], "ssh-") && !strings.HasPrefix(f[0], "ecdsa-") {
			err = fmt.Errorf("%q is not an OpenSSH public key (TYPE BASE64 [COMMENT], quoted on the kernel command line)", v)
		}
		c.SSHKey = v
	case "cpu_overcommit":
		c.CPUOvercommit, err = ParseRatio(v)
	case "ram_overcommit":
		c.RAMOvercommit, err = ParseRatio(v)
	case "cpu_reserved":
		c.CPUReserved, err = parseInt(v, 0, 4096)
	case "ram_reserved":
		c.RAMReserved, err = parseInt(v, 0, 1<<20)
	}
	return err
}

func (t *Toolchain) set(name, v string) error {
	var err error
	switch name {
	case "toolchain_url":
		err = checkURL(v)
		t.URL = v
	case "toolchain_trust":
		err = checkFingerprint(v)
		t.Trust = v
	case "instances":
		t.Instances, err = parseInt(v, 1, 256)
	case "nice":
		t.Nice, err = parseInt(v, -20, 19)
	case "bridge":
		if !slices.Contains(Bridges, v) {
			err = fmt.Errorf("%q is neither br0 (public) nor br1 (private, the default)", v)
		}
		t.Bridge, t.BridgeSet = v, true
	case "controller_url":
		if err = checkURL(v); err == nil {
			t.Controllers = append(t.Controllers, v)
		}
	case "controller_trust":
		if err = checkFingerprint(v); err == nil {
			t.ControllerTrust = append(t.ControllerTrust, v)
		}
	}
	return err
}

// checkToolchainName: a toolchain name is a directory name and part of
// agent and unit names joined with "-", so it is letters, digits and "_".
func checkToolchainName(s string) error {
	if s == "" {
		return errors.New("empty toolchain name after the dot")
	}
	for _, r := range s {
		switch {
		case r == '-':
			return fmt.Errorf("toolchain name %q contains '-', which names may not", s)
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_':
		default:
			return fmt.Errorf("toolchain name %q: %q is not a letter, digit or '_'", s, r)
		}
	}
	return nil
}

func parseInt(s string, lo, hi int) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("%q is not an integer from %d to %d", s, lo, hi)
	}
	return n, nil
}

// checkURL accepts the schemes the host OS fetches from.
func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q is not a URL: %w", s, err)
	}
	switch u.Scheme {
	case "http", "https", "tftp":
		if u.Host == "" {
			return fmt.Errorf("%q has no host", s)
		}
	case "file":
		if u.Path == "" {
			return fmt.Errorf("%q has no path", s)
		}
	default:
		return fmt.Errorf("%q: scheme %q is not http, https, tftp or file", s, u.Scheme)
	}
	return nil
}

func checkHostPort(s string) error {
	if s == "" || strings.ContainsAny(s, " \t/@") {
		return fmt.Errorf("%q is not HOST or HOST:PORT", s)
	}
	if h, p, ok := strings.Cut(s, ":"); ok && !strings.Contains(p, ":") {
		if _, err := parseInt(p, 1, 65535); err != nil || h == "" {
			return fmt.Errorf("%q is not HOST or HOST:PORT", s)
		}
	}
	return nil
}

// checkFingerprint accepts a certificate fingerprint as bbot prints it
// (hex pairs joined with ':'), or "yes"/"no" as bbot's --trust does.
func checkFingerprint(s string) error {
	if s == "yes" || s == "no" {
		return nil
	}
	for i, part := range strings.Split(s, ":") {
		if len(part) != 2 || !isHex(part) {
			return fmt.Errorf("%q is not a fingerprint (hex pairs joined with ':'; pair %d is %q)", s, i+1, part)
		}
	}
	return nil
}

func isHex(s string) bool {
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r >= 'A' && r <= 'F') {
			return false
		}
	}
	return true
}
