package manifest

import "strings"

// Result is bbot's result manifest: the outcome of building a task, with
// each operation's status and log.
type Result struct {
	// The package built.
	Name, Version string
	// Status is the overall status: at least the operations' statuses
	// merged (see Status.Merge).
	Status Status
	// Results are the operations in the order they ran.
	Results []OperationResult
	// WorkerChecksum and DependencyChecksum identify the worker and the
	// package's dependencies of this build, so that the controller can
	// tell the next build of the same configuration whether anything
	// changed.
	WorkerChecksum, DependencyChecksum string
	// Start (buildfarm-start, ours) says how the task's VM started: warm
	// (restored from a saved state) or cold (booted).
	Start string
	// Extra holds the fields kept in lenient mode.
	Extra []Pair
}

// OperationResult is one operation of a result: <operation>-status and
// <operation>-log.
type OperationResult struct {
	Operation string
	Status    Status
	Log       string
}

const (
	statusSuffix = "-status"
	logSuffix    = "-log"
)

// ParseResult validates m as a result manifest. An operation's log must
// follow its status, and the overall status must be at least as severe as
// every operation's.
func ParseResult(m Manifest, file string, mode Mode) (*Result, error) {
	f := newFields("result", m, file, mode)
	r := &Result{}
	var statusPair Pair
	logs := map[string]bool{}
	find := func(op string) int {
		for i, o := range r.Results {
			if o.Operation == op {
				return i
			}
		}
		return -1
	}
	status := func(p Pair) (Status, error) {
		s, err := ParseStatus(p.Value)
		if err != nil {
			return 0, f.errorf(p, "invalid status %s in '%s'", quoteValue(p.Value), p.Name)
		}
		return s, nil
	}
	for _, p := range f.pairs() {
		var err error
		switch n := p.Name; {
		case n == "name":
			err = f.set(p, &r.Name, packageName)
		case n == "version":
			err = f.set(p, &r.Version, packageVersion)
		case n == "worker-checksum":
			err = f.set(p, &r.WorkerChecksum, word)
		case n == "dependency-checksum":
			err = f.set(p, &r.DependencyChecksum, word)
		case n == "buildfarm-start":
			err = f.set(p, &r.Start, word)
		case n == "status":
			if err = f.once(p); err == nil {
				r.Status, err = status(p)
				statusPair = p
			}
		case len(n) > len(statusSuffix) && strings.HasSuffix(n, statusSuffix):
			op := strings.TrimSuffix(n, statusSuffix)
			if find(op) >= 0 {
				return nil, f.errorf(p, "redefinition of '%s'", n)
			}
			var s Status
			if s, err = status(p); err == nil {
				r.Results = append(r.Results, OperationResult{Operation: op, Status: s})
			}
		case len(n) > len(logSuffix) && strings.HasSuffix(n, logSuffix):
			op := strings.TrimSuffix(n, logSuffix)
			i := find(op)
			switch {
			case i < 0:
				return nil, f.errorf(p, "'%s' before '%s%s'", n, op, statusSuffix)
			case logs[op]:
				return nil, f.errorf(p, "redefinition of '%s'", n)
			}
			logs[op] = true
			r.Results[i].Log = p.Value
		default:
			err = f.unknown(p)
		}
		if err != nil {
			return nil, err
		}
	}
	if err := f.require("name", "version", "status"); err != nil {
		return nil, err
	}
	var merged Status
	for _, o := range r.Results {
		merged = merged.Merge(o.Status)
	}
	if r.Status < merged {
		return nil, f.errorf(statusPair, "status '%s' is less severe than the operations' merged status '%s'", r.Status, merged)
	}
	r.Extra = f.extra
	return r, nil
}

// Manifest returns the result manifest's pairs in libbbot's order: name,
// version and status, the operations' statuses, their logs (empty ones
// left out), the checksums, buildfarm-start, then the extra fields.
func (r *Result) Manifest() Manifest {
	b := newBuilder()
	b.add("name", r.Name)
	b.add("version", r.Version)
	b.add("status", r.Status.String())
	for _, o := range r.Results {
		b.add(o.Operation+statusSuffix, o.Status.String())
	}
	for _, o := range r.Results {
		b.opt(o.Operation+logSuffix, o.Log)
	}
	b.opt("worker-checksum", r.WorkerChecksum)
	b.opt("dependency-checksum", r.DependencyChecksum)
	b.opt("buildfarm-start", r.Start)
	b.extra(r.Extra)
	return b.m
}
