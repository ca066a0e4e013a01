package manifest

import (
	"regexp"
	"strings"
)

// Task is bbot's task manifest: what to build, where to get it, and on
// which machine and configuration; plus buildfarm's own fields, which say
// how (see Steps).
type Task struct {
	// The package to build.
	Name, Version string
	// RepositoryURL is the package's repository (a remote pkg or git
	// repository location); RepositoryType, if set, is pkg, git or dir.
	RepositoryURL  string
	RepositoryType string
	// Trust lists the repository certificate fingerprints to trust
	// (SHA256, colon-separated upper-case hex bytes), or "yes".
	Trust []string
	// Requires holds the package's requirement alternatives, as the
	// package manifest's requires values.
	Requires []string
	// Tests holds the package's tests, examples and benchmarks values.
	Tests []TestDependency
	// DependencyChecksum is the checksum of the dependencies of the last
	// build of this package configuration, if any.
	DependencyChecksum string

	// Machine is the name of the build machine.
	Machine string
	// AuxiliaryMachines are the machines to start beside the build
	// machine (a database server for the tests, for example).
	AuxiliaryMachines []AuxiliaryMachine
	// Target is the target triplet to build for.
	Target string
	// Environment names the build environment.
	Environment string
	// AuxiliaryEnvironment holds NAME=VALUE lines describing the running
	// auxiliary machines; the agent sets it.
	AuxiliaryEnvironment string
	// TargetConfig lists build system configuration arguments, as words of
	// a quoted list (see Unquote).
	TargetConfig []string
	// PackageConfig is the package configuration: bpkg arguments and
	// configuration variables.
	PackageConfig string
	// Host, if set, says whether the configuration is a host (or build2
	// module) configuration.
	Host *bool
	// WarningRegex lists the regular expressions that detect warnings in
	// logs, as words of a quoted list (see Task.WarningRegexps).
	WarningRegex []string
	// Interactive is the breakpoint of an interactive build.
	Interactive string
	// WorkerChecksum is the worker checksum of the last build, if any.
	WorkerChecksum string

	// Archive is buildfarm's buildfarm-archive: the file name of the
	// sources archive that the agent places beside the task manifest.
	Archive string
	// ArchiveURL (buildfarm-archive-url) is where a controller serves the
	// archive, and ArchiveSHA256 (buildfarm-archive-sha256) its SHA-256 in
	// lower-case hex: the agent downloads it, checks the sum and places it
	// in the VM as Archive.
	ArchiveURL, ArchiveSHA256 string
	// Steps are buildfarm's buildfarm-configure, buildfarm-update,
	// buildfarm-test and buildfarm-install commands, in that order; any
	// may be absent.
	Steps []Step

	// Extra holds the fields kept in lenient mode.
	Extra []Pair
}

// TestDependency is one tests, examples or benchmarks value of a task.
type TestDependency struct {
	// Kind is tests, examples or benchmarks.
	Kind string
	// Value is [*]<name> [<version-constraint>] ..., as in the package
	// manifest.
	Value string
}

// AuxiliaryMachine is one auxiliary-machine[-<name>] value of a task.
type AuxiliaryMachine struct {
	// Name is the suffix of the field name ("" for auxiliary-machine):
	// the upper-cased prefix of the variables that describe the machine
	// in the auxiliary environment.
	Name string
	// Machine is the machine's name.
	Machine string
}

// Step is one build step of a task: an operation and the shell command
// that performs it.
type Step struct {
	Operation string
	Command   string
}

// StepOperations are the operations of Task.Steps in the order they run;
// each is the field buildfarm-<operation>.
var StepOperations = []string{"configure", "update", "test", "install"}

const (
	auxMachinePrefix = "auxiliary-machine"
	archiveField     = "buildfarm-archive"
	archiveURLField  = "buildfarm-archive-url"
	archiveSumField  = "buildfarm-archive-sha256"
	stepPrefix       = "buildfarm-"
)

// ParseTask validates m as a task manifest.
func ParseTask(m Manifest, file string, mode Mode) (*Task, error) {
	f := newFields("task", m, file, mode)
	t := &Task{}
	steps := map[string]string{}
	for _, p := range f.pairs() {
		v := p.Value
		var why string
		var err error
		switch n := p.Name; {
		case n == "name":
			err = f.set(p, &t.Name, packageName)
		case n == "version":
			err = f.set(p, &t.Version, packageVersion)
		case n == "repository-url":
			err = f.set(p, &t.RepositoryURL, repositoryURL)
		case n == "repository-type":
			err = f.set(p, &t.RepositoryType, func(v string) string {
				if v != "pkg" && v != "git" && v != "dir" {
					return "not pkg, git or dir"
				}
				return ""
			})
		case n == "trust":
			if v != "yes" && !certFingerprintRE().MatchString(v) {
				return nil, f.invalid(p, "not 'yes' or a SHA256 certificate fingerprint (XX:XX:...)")
			}
			t.Trust = append(t.Trust, v)
		case n == "requires":
			if why = nonEmpty(v); why != "" {
				return nil, f.invalid(p, why)
			}
			t.Requires = append(t.Requires, v)
		case n == "tests" || n == "examples" || n == "benchmarks":
			name := ""
			if ws := strings.Fields(strings.TrimPrefix(strings.TrimSpace(v), "*")); len(ws) > 0 {
				name = ws[0]
			}
			if why = packageName(name); why != "" {
				return nil, f.invalid(p, why)
			}
			t.Tests = append(t.Tests, TestDependency{Kind: n, Value: v})
		case n == "dependency-checksum":
			err = f.set(p, &t.DependencyChecksum, word)
		case n == "machine":
			err = f.set(p, &t.Machine, word)
		case n == auxMachinePrefix || strings.HasPrefix(n, auxMachinePrefix+"-") && len(n) > len(auxMachinePrefix)+1:
			if err = f.once(p); err != nil {
				break
			}
			if why = word(v); why != "" {
				return nil, f.invalid(p, why)
			}
			name := strings.TrimPrefix(strings.TrimPrefix(n, auxMachinePrefix), "-")
			t.AuxiliaryMachines = append(t.AuxiliaryMachines, AuxiliaryMachine{Name: name, Machine: v})
		case n == "target":
			err = f.set(p, &t.Target, triplet)
		case n == "environment":
			err = f.set(p, &t.Environment, word)
		case n == "auxiliary-environment":
			err = f.set(p, &t.AuxiliaryEnvironment, environmentLines)
		case n == "target-config":
			if err = f.once(p); err != nil {
				break
			}
			if t.TargetConfig, why = quotedList(v); why != "" {
				return nil, f.invalid(p, why)
			}
		case n == "package-config":
			err = f.set(p, &t.PackageConfig, nonEmpty)
		case n == "host":
			if err = f.once(p); err != nil {
				break
			}
			var b bool
			if b, why = boolean(v); why != "" {
				return nil, f.invalid(p, why)
			}
			t.Host = &b
		case n == "warning-regex":
			if err = f.once(p); err != nil {
				break
			}
			if t.WarningRegex, why = quotedList(v); why != "" {
				return nil, f.invalid(p, why)
			}
			if _, rerr := t.WarningRegexps(); rerr != nil {
				return nil, f.invalid(p, rerr.Error())
			}
		case n == "interactive":
			err = f.set(p, &t.Interactive, word)
		case n == "worker-checksum":
			err = f.set(p, &t.WorkerChecksum, word)
		case n == archiveField:
			err = f.set(p, &t.Archive, fileName)
		case n == archiveURLField:
			err = f.set(p, &t.ArchiveURL, word)
		case n == archiveSumField:
			err = f.set(p, &t.ArchiveSHA256, func(v string) string {
				if !sha256RE().MatchString(v) {
					return "not a SHA-256 sum (64 lower-case hex digits)"
				}
				return ""
			})
		case isStepField(n):
			var c string
			if err = f.set(p, &c, nonEmpty); err == nil {
				steps[strings.TrimPrefix(n, stepPrefix)] = c
			}
		default:
			err = f.unknown(p)
		}
		if err != nil {
			return nil, err
		}
	}
	if err := f.require("name", "version", "repository-url", "machine", "target"); err != nil {
		return nil, err
	}
	for _, op := range StepOperations {
		if c, ok := steps[op]; ok {
			t.Steps = append(t.Steps, Step{Operation: op, Command: c})
		}
	}
	t.Extra = f.extra
	return t, nil
}

func isStepField(name string) bool {
	for _, op := range StepOperations {
		if name == stepPrefix+op {
			return true
		}
	}
	return false
}

// fileName checks a plain file name: no directory, not . or ...
func fileName(v string) string {
	if s := word(v); s != "" {
		return s
	}
	if strings.ContainsAny(v, `/\`) || v == "." || v == ".." {
		return "not a plain file name"
	}
	return ""
}

// WarningRegexps compiles the task's warning regular expressions (the
// words of WarningRegex, unquoted). They are ECMAScript regexes in build2;
// those that Go's regexp package cannot read are reported.
func (t *Task) WarningRegexps() ([]*regexp.Regexp, error) {
	var rs []*regexp.Regexp
	for _, w := range t.WarningRegex {
		r, err := regexp.Compile(Unquote(w))
		if err != nil {
			return nil, err
		}
		rs = append(rs, r)
	}
	return rs, nil
}

// Manifest returns the task manifest's pairs in libbbot's order, then
// buildfarm's fields (the steps in the order of StepOperations; a step of
// another operation is not written), then the extra ones.
func (t *Task) Manifest() Manifest {
	b := newBuilder()
	b.add("name", t.Name)
	b.add("version", t.Version)
	b.add("repository-url", t.RepositoryURL)
	b.opt("repository-type", t.RepositoryType)
	for _, v := range t.Trust {
		b.add("trust", v)
	}
	for _, v := range t.Requires {
		b.add("requires", v)
	}
	for _, d := range t.Tests {
		b.add(d.Kind, d.Value)
	}
	b.opt("dependency-checksum", t.DependencyChecksum)
	b.add("machine", t.Machine)
	for _, a := range t.AuxiliaryMachines {
		n := auxMachinePrefix
		if a.Name != "" {
			n += "-" + a.Name
		}
		b.add(n, a.Machine)
	}
	b.add("target", t.Target)
	b.opt("environment", t.Environment)
	b.opt("auxiliary-environment", t.AuxiliaryEnvironment)
	b.opt("target-config", strings.Join(t.TargetConfig, " "))
	b.opt("package-config", t.PackageConfig)
	if t.Host != nil {
		if *t.Host {
			b.add("host", "true")
		} else {
			b.add("host", "false")
		}
	}
	b.opt("warning-regex", strings.Join(t.WarningRegex, " "))
	b.opt("interactive", t.Interactive)
	b.opt("worker-checksum", t.WorkerChecksum)
	b.opt(archiveField, t.Archive)
	b.opt(archiveURLField, t.ArchiveURL)
	b.opt(archiveSumField, t.ArchiveSHA256)
	for _, op := range StepOperations {
		for _, s := range t.Steps {
			if s.Operation == op {
				b.add(stepPrefix+op, s.Command)
			}
		}
	}
	b.extra(t.Extra)
	return b.m
}
