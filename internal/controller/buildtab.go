package controller

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"slices"
	"strings"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/manifest"
)

// Config is one build configuration, one line of the buildtab: the
// machines it runs on (a path.Match pattern over the machine names agents
// offer), its name, its target triplet and the classes it belongs to.
type Config struct {
	MachinePattern string
	Name           string
	Target         string
	// Classes are the line's classes; a line without any is in class
	// DefaultClass. Every configuration is also in class AllClass.
	Classes []string
}

// Class names with a meaning of their own.
const (
	// DefaultClass is the class of the configurations a line names no
	// class for, and the class a submission that names no configurations
	// selects.
	DefaultClass = "default"
	// AllClass selects every configuration.
	AllClass = "all"
)

// Buildtab is the controller's build configurations, after brep's buildtab.
type Buildtab struct {
	Configs []Config
}

var (
	configNameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.+-]*$`)
	targetRE     = regexp.MustCompile(`^[A-Za-z0-9_.]+(-[A-Za-z0-9_.]+)+$`)
)

// DefaultBuildtab is the buildtab of a controller started without one: one
// configuration, "any", on every machine, for this host's architecture.
func DefaultBuildtab() *Buildtab {
	cpu := string(arch.Host())
	if cpu == "" {
		cpu = string(arch.X8664)
	}
	return &Buildtab{Configs: []Config{{MachinePattern: "*", Name: "any", Target: cpu + "-linux-gnu", Classes: []string{DefaultClass}}}}
}

// ReadBuildtab reads a buildtab file (see ParseBuildtab).
func ReadBuildtab(file string) (*Buildtab, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("buildtab: %w", err)
	}
	defer f.Close()
	return ParseBuildtab(f, file)
}

// ParseBuildtab reads a buildtab: one configuration a line,
//
//	MACHINE-PATTERN CONFIG-NAME TARGET [CLASS...]
//
// separated by blanks; '#' starts a comment line; blank lines are
// ignored. The pattern has path.Match's syntax; configuration and class
// names are letters, digits and _ . + - (not starting with . + or -); the
// target is a triplet such as x86_64-linux-gnu. Errors are
// FILE:LINE: DESCRIPTION. A buildtab with no configuration is an error.
func ParseBuildtab(r io.Reader, file string) (*Buildtab, error) {
	bt := &Buildtab{}
	seen := map[string]int{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		errorf := func(format string, args ...any) error {
			return fmt.Errorf("%s:%d: %s", file, line, fmt.Sprintf(format, args...))
		}
		fs := strings.Fields(text)
		if len(fs) < 3 {
			return nil, errorf("want MACHINE-PATTERN CONFIG-NAME TARGET [CLASS...], got %d field(s)", len(fs))
		}
		c := Config{MachinePattern: fs[0], Name: fs[1], Target: fs[2]}
		if _, err := path.Match(c.MachinePattern, ""); err != nil {
			return nil, errorf("machine pattern %q: %v", c.MachinePattern, err)
		}
		if !configNameRE.MatchString(c.Name) {
			return nil, errorf("configuration name %q: not letters, digits and _ . + - (not starting with . + or -)", c.Name)
		}
		if c.Name == AllClass {
			return nil, errorf("configuration name %q: reserved for the class of every configuration", c.Name)
		}
		if prev, ok := seen[c.Name]; ok {
			return nil, errorf("configuration %q: defined again (first on line %d)", c.Name, prev)
		}
		if !targetRE.MatchString(c.Target) {
			return nil, errorf("target %q: not a target triplet (CPU-VENDOR-OS)", c.Target)
		}
		for _, cl := range fs[3:] {
			if !configNameRE.MatchString(cl) {
				return nil, errorf("class %q: not letters, digits and _ . + - (not starting with . + or -)", cl)
			}
			if !slices.Contains(c.Classes, cl) {
				c.Classes = append(c.Classes, cl)
			}
		}
		if len(c.Classes) == 0 {
			c.Classes = []string{DefaultClass}
		}
		seen[c.Name] = line
		bt.Configs = append(bt.Configs, c)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s:%d: %w", file, line+1, err)
	}
	if len(bt.Configs) == 0 {
		return nil, fmt.Errorf("%s: no build configurations", file)
	}
	return bt, nil
}

// Config returns the configuration named name.
func (bt *Buildtab) Config(name string) (Config, bool) {
	for _, c := range bt.Configs {
		if c.Name == name {
			return c, true
		}
	}
	return Config{}, false
}

// Select returns the configurations that names select, each once, in
// buildtab order: a name selects the configuration of that name, or else
// every configuration of that class (AllClass: all of them). No names
// select DefaultClass. A name that selects nothing is an error.
func (bt *Buildtab) Select(names []string) ([]Config, error) {
	if len(names) == 0 {
		names = []string{DefaultClass}
	}
	pick := map[string]bool{}
	for _, n := range names {
		found := false
		for _, c := range bt.Configs {
			if c.Name == n || n == AllClass || slices.Contains(c.Classes, n) {
				pick[c.Name], found = true, true
			}
		}
		if !found {
			return nil, fmt.Errorf("configuration %q: no build configuration or class of that name", n)
		}
	}
	var cs []Config
	for _, c := range bt.Configs {
		if pick[c.Name] {
			cs = append(cs, c)
		}
	}
	return cs, nil
}

// Machines maps each configuration to the first offered machine whose
// name its pattern matches and whose architecture (buildfarm-arch, when
// the machine says it) can build its target, as store.Claim wants it.
func (bt *Buildtab) Machines(offered []manifest.MachineHeader) map[string]string {
	m := map[string]string{}
	for _, c := range bt.Configs {
		for _, h := range offered {
			if ok, _ := path.Match(c.MachinePattern, h.Name); !ok {
				continue
			}
			if h.Arch != "" && arch.Check(c.Target, arch.Arch(h.Arch)) != nil {
				continue
			}
			m[c.Name] = h.Name
			break
		}
	}
	return m
}
