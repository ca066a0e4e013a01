package machine

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// BootstrapProtocol is the version of the bootstrap protocol of this
// buildfarm: the P of <name>-<P> that the agent resolves.
const BootstrapProtocol = 1

// Files of a machine directory.
const (
	ManifestFile     = "manifest"              // the machine manifest
	BootstrappedFile = "bootstrapped-manifest" // the bootstrapped machine manifest, in <name>-<toolchain>/
	RawDisk          = "disk.img"              // a raw disk image
	OverlayDisk      = "disk.qcow2"            // a qcow2 overlay (fallback backend)
	lockFile         = ".lock"
)

var (
	// ErrExists is returned by Add for a machine that is already there.
	ErrExists = errors.New("machine exists")
	// ErrNotFound is returned for a machine, or a revision of it, that is not there.
	ErrNotFound = errors.New("machine not found")
	// ErrRemoved is returned when a machine's link for our bootstrap
	// protocol is gone: it is being removed (or has no revision for us).
	ErrRemoved = errors.New("machine removed")
	// ErrNotBootstrapped is returned by SnapshotForTask when there is no
	// bootstrapped machine for the toolchain.
	ErrNotBootstrapped = errors.New("machine not bootstrapped")
)

var (
	machineNameRE   = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.+-]*$`)
	toolchainNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)
	revisionRE      = regexp.MustCompile(`^([0-9]+)\.([0-9]+)$`)
	protocolRE      = regexp.MustCompile(`^[0-9]+$`)
	workRE          = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_.]*)-([0-9a-f]{8})$`)
)

// CheckName checks a machine name: letters, digits and _.+-, not starting
// with a punctuation character other than _.
func CheckName(name string) error {
	if !machineNameRE.MatchString(name) {
		return fmt.Errorf("invalid machine name %q", name)
	}
	return nil
}

// CheckToolchain checks a toolchain name. It may not contain '-' and may not
// start with a digit, so that <name>-<toolchain> can be told apart from the
// revisions and links of the machine and from its task snapshots.
func CheckToolchain(tc string) error {
	if !toolchainNameRE.MatchString(tc) {
		return fmt.Errorf("invalid toolchain name %q: letters, digits, _ and ., starting with a letter or _", tc)
	}
	return nil
}

// Revision is the <P>.<R> of a machine revision directory.
type Revision struct {
	Protocol, Number int
}

func (r Revision) String() string { return fmt.Sprintf("%d.%d", r.Protocol, r.Number) }

// ParseRevision parses "P.R".
func ParseRevision(s string) (Revision, error) {
	m := revisionRE.FindStringSubmatch(s)
	if m == nil {
		return Revision{}, fmt.Errorf("invalid machine revision %q, want P.R", s)
	}
	p, err1 := strconv.Atoi(m[1])
	r, err2 := strconv.Atoi(m[2])
	if err := errors.Join(err1, err2); err != nil {
		return Revision{}, fmt.Errorf("invalid machine revision %q: %w", s, err)
	}
	return Revision{p, r}, nil
}

// kind is what an entry of a machine directory is.
type kind int

const (
	kindOther        kind = iota
	kindRevision          // <name>-<P>.<R>
	kindLink              // <name>-<P>
	kindBootstrapped      // <name>-<toolchain>
	kindWork              // <name>-<toolchain>-<xxx>
)

// entry is a classified entry of a machine directory.
type entry struct {
	name      string
	kind      kind
	revision  Revision // kindRevision
	protocol  int      // kindLink
	toolchain string   // kindBootstrapped, kindWork
}

// classify tells what the entry called base in the directory of machine
// is, from its name alone.
func classify(machine, base string) entry {
	e := entry{name: base}
	rest, ok := strings.CutPrefix(base, machine+"-")
	if !ok || rest == "" {
		return e
	}
	switch {
	case revisionRE.MatchString(rest):
		r, err := ParseRevision(rest)
		if err == nil {
			e.kind, e.revision = kindRevision, r
		}
	case protocolRE.MatchString(rest):
		p, err := strconv.Atoi(rest)
		if err == nil {
			e.kind, e.protocol = kindLink, p
		}
	case toolchainNameRE.MatchString(rest):
		e.kind, e.toolchain = kindBootstrapped, rest
	default:
		if m := workRE.FindStringSubmatch(rest); m != nil {
			e.kind, e.toolchain = kindWork, m[1]
		}
	}
	return e
}

func revisionName(machine string, r Revision) string { return machine + "-" + r.String() }
func linkName(machine string, protocol int) string   { return fmt.Sprintf("%s-%d", machine, protocol) }
func bootstrappedName(machine, tc string) string     { return machine + "-" + tc }
func workLockName(work string) string                { return "." + work + ".lock" }

// randomSuffix returns 8 random hex digits.
func randomSuffix() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// useLockName is the lock that keeps a bootstrapped machine in place while
// a task snapshot copies it (shared) and that Commit takes to replace it
// (exclusive): a copy by the fallback backend is not atomic.
func useLockName(bootstrapped string) string { return "." + bootstrapped + ".use" }
