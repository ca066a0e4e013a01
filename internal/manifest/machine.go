package manifest

import (
	"sort"
	"strconv"
	"strings"

	"github.com/buildfarm/buildfarm/internal/arch"
)

// MachineHeader is bbot's machine header manifest: what an agent tells a
// controller about each machine it has (in a task request), and the first
// fields of a machine manifest.
type MachineHeader struct {
	// ID identifies the machine's revision (<name>-<P>.<R>); Name is the
	// machine's name; Summary describes it in a line.
	ID, Name, Summary string
	// Role is "build", "auxiliary" or "" (build).
	Role string
	// RAMMinimum and RAMMaximum are the machine's RAM needs in KiB, zero
	// when absent.
	RAMMinimum, RAMMaximum uint64
	// Arch is buildfarm's buildfarm-arch, as in Machine: what a controller
	// needs to give a machine only the tasks of its architecture.
	Arch string
	// Extra holds the fields kept in lenient mode.
	Extra []Pair
}

// headerField reads p into h if it is a machine header field.
func headerField(f *fields, p Pair, h *MachineHeader) (bool, error) {
	var dst *string
	var check func(string) string
	switch p.Name {
	case "id":
		dst, check = &h.ID, word
	case "name":
		dst, check = &h.Name, word
	case "summary":
		dst, check = &h.Summary, nonEmpty
	case "role":
		dst, check = &h.Role, func(v string) string {
			if v != "build" && v != "auxiliary" {
				return "not build or auxiliary"
			}
			return ""
		}
	case archField:
		dst, check = &h.Arch, func(v string) string {
			if v != string(arch.X8664) && v != string(arch.AArch64) {
				return "not x86_64 or aarch64"
			}
			return ""
		}
	case "ram-minimum", "ram-maximum":
		if err := f.once(p); err != nil {
			return true, err
		}
		n, why := kib(p.Value)
		if why != "" {
			return true, f.invalid(p, why)
		}
		if p.Name == "ram-minimum" {
			h.RAMMinimum = n
		} else {
			h.RAMMaximum = n
		}
		return true, nil
	default:
		return false, nil
	}
	return true, f.set(p, dst, check)
}

// checkHeader checks the required header fields and the RAM range.
func checkHeader(f *fields, h *MachineHeader) error {
	if err := f.require("id", "name", "summary"); err != nil {
		return err
	}
	if h.RAMMinimum != 0 && h.RAMMaximum != 0 && h.RAMMinimum > h.RAMMaximum {
		for _, p := range f.pairs() {
			if p.Name == "ram-maximum" {
				return f.errorf(p, "'ram-maximum' %d is less than 'ram-minimum' %d", h.RAMMaximum, h.RAMMinimum)
			}
		}
	}
	return nil
}

func addHeader(b *builder, h *MachineHeader) {
	b.add("id", h.ID)
	b.add("name", h.Name)
	b.add("summary", h.Summary)
	b.opt("role", h.Role)
	if h.RAMMinimum != 0 {
		b.add("ram-minimum", strconv.FormatUint(h.RAMMinimum, 10))
	}
	if h.RAMMaximum != 0 {
		b.add("ram-maximum", strconv.FormatUint(h.RAMMaximum, 10))
	}
}

// ParseMachineHeader validates m as a machine header manifest.
func ParseMachineHeader(m Manifest, file string, mode Mode) (*MachineHeader, error) {
	return parseMachineHeader("machine header", m, file, mode)
}

func parseMachineHeader(kind string, m Manifest, file string, mode Mode) (*MachineHeader, error) {
	f := newFields(kind, m, file, mode)
	h := &MachineHeader{}
	for _, p := range f.pairs() {
		ok, err := headerField(f, p, h)
		if !ok {
			err = f.unknown(p)
		}
		if err != nil {
			return nil, err
		}
	}
	if err := checkHeader(f, h); err != nil {
		return nil, err
	}
	h.Extra = f.extra
	return h, nil
}

// Manifest returns the machine header manifest's pairs: build2's fields,
// buildfarm-arch, then the extra fields.
func (h *MachineHeader) Manifest() Manifest {
	b := newBuilder()
	addHeader(b, h)
	b.opt(archField, h.Arch)
	b.extra(h.Extra)
	return b.m
}

// Machine is bbot's machine manifest, the manifest file of a machine
// directory: the header fields, then how to run the machine.
type Machine struct {
	ID, Name, Summary      string
	Role                   string
	RAMMinimum, RAMMaximum uint64
	// Type is kvm (a QEMU virtual machine) or nspawn (a container).
	Type string
	// MAC is the machine's network MAC address (xx:xx:xx:xx:xx:xx), or ""
	// to generate one.
	MAC string
	// Options are extra options for the VM, as words of a quoted list
	// (see UnquotedOptions).
	Options []string
	// Changes are the change log entries of the machine, as written.
	Changes []string
	// Arch is buildfarm's buildfarm-arch: the guest's architecture,
	// x86_64 or aarch64 (package arch); "" (absent) means x86_64. A build2
	// peer in lenient mode keeps it as an unknown field.
	Arch string
	// Extra holds the fields kept in lenient mode.
	Extra []Pair
}

const archField = "buildfarm-arch"

// Architecture returns the guest's architecture: Arch, or x86_64 when the
// manifest does not say.
func (m *Machine) Architecture() arch.Arch {
	if m.Arch == "" {
		return arch.X8664
	}
	return arch.Arch(m.Arch)
}

// Header returns the machine's header manifest.
func (m *Machine) Header() MachineHeader {
	return MachineHeader{ID: m.ID, Name: m.Name, Summary: m.Summary, Role: m.Role,
		RAMMinimum: m.RAMMinimum, RAMMaximum: m.RAMMaximum, Arch: m.Arch}
}

// UnquotedOptions returns the options with their quotes removed, ready to
// be arguments of the VM's command.
func (m *Machine) UnquotedOptions() []string {
	r := make([]string, len(m.Options))
	for i, o := range m.Options {
		r[i] = Unquote(o)
	}
	return r
}

// ParseMachine validates m as a machine manifest.
func ParseMachine(m Manifest, file string, mode Mode) (*Machine, error) {
	f := newFields("machine", m, file, mode)
	h := &MachineHeader{}
	r := &Machine{}
	for _, p := range f.pairs() {
		ok, err := headerField(f, p, h)
		if ok {
			if err != nil {
				return nil, err
			}
			continue
		}
		var why string
		switch p.Name {
		case "type":
			err = f.set(p, &r.Type, func(v string) string {
				if v != "kvm" && v != "nspawn" {
					return "not kvm or nspawn"
				}
				return ""
			})
		case "mac":
			err = f.set(p, &r.MAC, func(v string) string {
				if !macRE().MatchString(v) {
					return "not a MAC address (xx:xx:xx:xx:xx:xx)"
				}
				return ""
			})
		case "options":
			if err = f.once(p); err != nil {
				break
			}
			if r.Options, why = quotedList(p.Value); why != "" {
				return nil, f.invalid(p, why)
			}
		case "changes":
			if why = nonEmpty(p.Value); why != "" {
				return nil, f.invalid(p, why)
			}
			r.Changes = append(r.Changes, p.Value)
		default:
			err = f.unknown(p)
		}
		if err != nil {
			return nil, err
		}
	}
	if err := checkHeader(f, h); err != nil {
		return nil, err
	}
	if err := f.require("type"); err != nil {
		return nil, err
	}
	r.ID, r.Name, r.Summary, r.Role = h.ID, h.Name, h.Summary, h.Role
	r.RAMMinimum, r.RAMMaximum, r.Arch = h.RAMMinimum, h.RAMMaximum, h.Arch
	r.Extra = f.extra
	return r, nil
}

// Manifest returns the machine manifest's pairs: the header fields, type,
// mac, options, changes, buildfarm-arch, then the extra fields.
func (m *Machine) Manifest() Manifest {
	b := newBuilder()
	h := m.Header()
	addHeader(b, &h)
	b.add("type", m.Type)
	b.opt("mac", m.MAC)
	b.opt("options", strings.Join(m.Options, " "))
	for _, c := range m.Changes {
		b.add("changes", c)
	}
	b.opt(archField, m.Arch)
	b.extra(m.Extra)
	return b.m
}

// Toolchain is bbot's toolchain manifest: the identity of the toolchain a
// machine was bootstrapped with.
type Toolchain struct {
	ID    string
	Extra []Pair
}

// ParseToolchain validates m as a toolchain manifest.
func ParseToolchain(m Manifest, file string, mode Mode) (*Toolchain, error) {
	f := newFields("toolchain", m, file, mode)
	t := &Toolchain{}
	for _, p := range f.pairs() {
		var err error
		if p.Name == "id" {
			if err = f.once(p); err == nil {
				if why := word(p.Value); why != "" {
					return nil, f.invalid(p, why)
				}
				t.ID = p.Value
			}
		} else {
			err = f.unknown(p)
		}
		if err != nil {
			return nil, err
		}
	}
	if t.ID == "" {
		return nil, f.missing("id")
	}
	t.Extra = f.extra
	return t, nil
}

// Manifest returns the toolchain manifest's pairs.
func (t *Toolchain) Manifest() Manifest {
	b := newBuilder()
	b.add("id", t.ID)
	b.extra(t.Extra)
	return b.m
}

// Bootstrap is bbot's bootstrap manifest: the versions of the tools
// (bbot, libbbot, libbpkg, libbutl, ...) a machine was bootstrapped with,
// one <tool>-version field each.
type Bootstrap struct {
	// Versions are sorted by tool name when serialized, as bbot keeps
	// them in a map.
	Versions []ToolVersion
	Extra    []Pair
}

// ToolVersion is one <tool>-version field: a numeric version.
type ToolVersion struct {
	Tool    string
	Version uint64
}

const versionSuffix = "-version"

// ParseBootstrap validates m as a bootstrap manifest: at least one
// <tool>-version field, each a number.
func ParseBootstrap(m Manifest, file string, mode Mode) (*Bootstrap, error) {
	f := newFields("bootstrap", m, file, mode)
	b := &Bootstrap{}
	for _, p := range f.pairs() {
		var err error
		if len(p.Name) > len(versionSuffix) && strings.HasSuffix(p.Name, versionSuffix) {
			if err = f.once(p); err != nil {
				return nil, err
			}
			v, perr := strconv.ParseUint(p.Value, 10, 64)
			if perr != nil {
				return nil, f.invalid(p, "not a numeric version")
			}
			b.Versions = append(b.Versions, ToolVersion{Tool: strings.TrimSuffix(p.Name, versionSuffix), Version: v})
		} else if err = f.unknown(p); err != nil {
			return nil, err
		}
	}
	if len(b.Versions) == 0 {
		return nil, f.missing("<tool>-version")
	}
	b.Extra = f.extra
	return b, nil
}

// Manifest returns the bootstrap manifest's pairs, versions sorted by
// tool name.
func (b *Bootstrap) Manifest() Manifest {
	vs := append([]ToolVersion(nil), b.Versions...)
	sort.Slice(vs, func(i, j int) bool { return vs[i].Tool < vs[j].Tool })
	m := newBuilder()
	for _, v := range vs {
		m.add(v.Tool+versionSuffix, strconv.FormatUint(v.Version, 10))
	}
	m.extra(b.Extra)
	return m.m
}

// BootstrappedMachine is bbot's bootstrapped machine manifest, kept beside
// a machine bootstrapped for a toolchain. As in bbot, its machine,
// toolchain and bootstrap fields each hold a whole manifest as their
// (multi-line) value.
type BootstrappedMachine struct {
	Machine   Machine
	Toolchain Toolchain
	Bootstrap Bootstrap
	Extra     []Pair
}

// ParseBootstrappedMachine validates m as a bootstrapped machine
// manifest, and the manifests nested in it.
func ParseBootstrappedMachine(m Manifest, file string, mode Mode) (*BootstrappedMachine, error) {
	f := newFields("bootstrapped machine", m, file, mode)
	r := &BootstrappedMachine{}
	for _, p := range f.pairs() {
		switch p.Name {
		case "machine", "toolchain", "bootstrap":
			if err := f.once(p); err != nil {
				return nil, err
			}
			nm, err := f.nested(p)
			if err != nil {
				return nil, err
			}
			switch p.Name {
			case "machine":
				var v *Machine
				if v, err = ParseMachine(nm, file, mode); err == nil {
					r.Machine = *v
				}
			case "toolchain":
				var v *Toolchain
				if v, err = ParseToolchain(nm, file, mode); err == nil {
					r.Toolchain = *v
				}
			case "bootstrap":
				var v *Bootstrap
				if v, err = ParseBootstrap(nm, file, mode); err == nil {
					r.Bootstrap = *v
				}
			}
			if err != nil {
				return nil, err
			}
		default:
			if err := f.unknown(p); err != nil {
				return nil, err
			}
		}
	}
	for _, n := range []string{"machine", "toolchain", "bootstrap"} {
		if !f.seen[n] {
			return nil, f.missing(n)
		}
	}
	r.Extra = f.extra
	return r, nil
}

// Manifest returns the bootstrapped machine manifest's pairs: machine,
// toolchain and bootstrap, each a serialized manifest.
func (b *BootstrappedMachine) Manifest() Manifest {
	m := newBuilder()
	m.add("machine", nestedValue(b.Machine.Manifest()))
	m.add("toolchain", nestedValue(b.Toolchain.Manifest()))
	m.add("bootstrap", nestedValue(b.Bootstrap.Manifest()))
	m.extra(b.Extra)
	return m.m
}
