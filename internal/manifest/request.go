package manifest

import (
	"strconv"
	"strings"
)

// The three messages between agents and controllers are streams of
// manifests, as bbot lays them out: a header manifest followed by the
// manifests it carries (machine headers, the task, the result), each a
// manifest of the stream of its own, not a field value.

// TaskRequest is bbot's task request: what an agent POSTs to a controller
// to ask for a task. In the stream, the header manifest is followed by one
// machine header manifest per machine the agent has.
type TaskRequest struct {
	// Agent names the agent (unique within its organization).
	Agent string
	// ToolchainName and ToolchainVersion (a standard version) say which
	// toolchain the agent's machines are bootstrapped with.
	ToolchainName, ToolchainVersion string
	// InteractiveMode is "", false, true or both: whether the agent wants
	// interactive builds ("" is false).
	InteractiveMode string
	// InteractiveLogin is how to log into the host for interactive
	// builds; required unless the mode is false.
	InteractiveLogin string
	// Fingerprint is the SHA256 fingerprint of the agent's public key (64
	// lower-case hex digits), when the controller authenticates agents.
	Fingerprint string
	// AuxiliaryRAM is the RAM in KiB available for auxiliary machines, nil
	// when absent.
	AuxiliaryRAM *uint64
	// Machines are the agent's machines.
	Machines []MachineHeader
	// Extra holds the header's fields kept in lenient mode.
	Extra []Pair
}

// The limits of the protocol's streams, for those who read them (with
// Limits.Parse) before their typed parser: each bounds what a stream may
// make the reader build, whatever its size in bytes. A stream is a header
// and what follows it: a task request's machine headers, a task
// response's task, a result request's result. The counts leave room for
// one manifest more than the protocol has, so that the typed parser, not
// the limit, names what is wrong with such a stream.
var (
	// TaskRequestLimits: the header and up to MaxMachines machine headers.
	TaskRequestLimits = Limits{Manifests: 1 + MaxMachines + 1, Pairs: 8 << 10}
	// TaskResponseLimits: the header and a task.
	TaskResponseLimits = Limits{Manifests: 3, Pairs: 10_000}
	// ResultRequestLimits: the header and a result.
	ResultRequestLimits = Limits{Manifests: 3, Pairs: 10_000}
)

// MaxMachines is the most machine headers a task request's limits let in.
const MaxMachines = 1024

// ParseTaskRequest validates ms as a task request stream.
func ParseTaskRequest(ms []Manifest, file string, mode Mode) (*TaskRequest, error) {
	f, err := streamHeader("task request", ms, file, mode)
	if err != nil {
		return nil, err
	}
	r := &TaskRequest{}
	var modePair Pair
	for _, p := range f.pairs() {
		switch p.Name {
		case "agent":
			err = f.set(p, &r.Agent, word)
		case "toolchain-name":
			err = f.set(p, &r.ToolchainName, word)
		case "toolchain-version":
			err = f.set(p, &r.ToolchainVersion, standardVersion)
		case "interactive-mode":
			modePair = p
			err = f.set(p, &r.InteractiveMode, func(v string) string {
				if v != "false" && v != "true" && v != "both" {
					return "not false, true or both"
				}
				return ""
			})
		case "interactive-login":
			err = f.set(p, &r.InteractiveLogin, nonEmpty)
		case "fingerprint":
			err = f.set(p, &r.Fingerprint, func(v string) string {
				if !sha256RE().MatchString(v) {
					return "not a SHA256 fingerprint (64 lower-case hex digits)"
				}
				return ""
			})
		case "auxiliary-ram":
			var v string
			if err = f.set(p, &v, func(v string) string {
				if _, err := strconv.ParseUint(v, 10, 64); err != nil {
					return "not a number of kilobytes"
				}
				return ""
			}); err == nil {
				n, _ := strconv.ParseUint(v, 10, 64)
				r.AuxiliaryRAM = &n
			}
		default:
			err = f.unknown(p)
		}
		if err != nil {
			return nil, err
		}
	}
	if err := f.require("agent", "toolchain-name", "toolchain-version"); err != nil {
		return nil, err
	}
	if r.InteractiveMode != "" && r.InteractiveMode != "false" && r.InteractiveLogin == "" {
		return nil, f.errorf(modePair, "interactive-mode %s requires 'interactive-login'", r.InteractiveMode)
	}
	if len(ms) == 1 {
		return nil, f.errorf(f.start(), "no machine header manifests follow")
	}
	for _, m := range ms[1:] {
		h, err := ParseMachineHeader(m, file, mode)
		if err != nil {
			return nil, err
		}
		r.Machines = append(r.Machines, *h)
	}
	r.Extra = f.extra
	return r, nil
}

// Manifests returns the task request stream: the header, then the machine
// headers.
func (r *TaskRequest) Manifests() []Manifest {
	b := newBuilder()
	b.add("agent", r.Agent)
	b.add("toolchain-name", r.ToolchainName)
	b.add("toolchain-version", r.ToolchainVersion)
	b.opt("interactive-mode", r.InteractiveMode)
	b.opt("interactive-login", r.InteractiveLogin)
	b.opt("fingerprint", r.Fingerprint)
	if r.AuxiliaryRAM != nil {
		b.add("auxiliary-ram", strconv.FormatUint(*r.AuxiliaryRAM, 10))
	}
	b.extra(r.Extra)
	ms := []Manifest{b.m}
	for i := range r.Machines {
		ms = append(ms, r.Machines[i].Manifest())
	}
	return ms
}

// TaskResponse is bbot's task response: a controller's answer to a task
// request. An empty Session means there is no task, and then nothing else
// is set; otherwise ResultURL and Task are, and the task manifest follows
// the header in the stream.
type TaskResponse struct {
	Session string
	// Challenge is the text the agent signs with its private key and
	// returns with the result, when the controller authenticates agents.
	Challenge string
	// ResultURL is where to POST the result request.
	ResultURL string
	// UploadURLs are where to upload build artifacts, one
	// <type>-upload-url field each.
	UploadURLs []UploadURL
	// AgentChecksum is the agent checksum of the last build of this
	// package configuration, if any.
	AgentChecksum string
	Task          *Task
	// Extra holds the header's fields kept in lenient mode.
	Extra []Pair
}

// UploadURL is one <type>-upload-url field of a task response.
type UploadURL struct {
	Type string
	URL  string
}

const uploadSuffix = "-upload-url"

// ParseTaskResponse validates ms as a task response stream.
func ParseTaskResponse(ms []Manifest, file string, mode Mode) (*TaskResponse, error) {
	f, err := streamHeader("task response", ms, file, mode)
	if err != nil {
		return nil, err
	}
	r := &TaskResponse{}
	var taskField Pair // the first field that an empty session forbids
	for _, p := range f.pairs() {
		switch n := p.Name; {
		case n == "session":
			err = f.set(p, &r.Session, func(string) string { return "" })
		case n == "challenge":
			err = f.set(p, &r.Challenge, nonEmpty)
		case n == "result-url":
			err = f.set(p, &r.ResultURL, httpURL)
		case len(n) > len(uploadSuffix) && strings.HasSuffix(n, uploadSuffix):
			var u string
			if err = f.set(p, &u, httpURL); err == nil {
				r.UploadURLs = append(r.UploadURLs, UploadURL{Type: strings.TrimSuffix(n, uploadSuffix), URL: u})
			}
		case n == "agent-checksum":
			err = f.set(p, &r.AgentChecksum, word)
		default:
			err = f.unknown(p)
		}
		if err != nil {
			return nil, err
		}
		if p.Name != "session" && f.seen[p.Name] && taskField.Name == "" {
			taskField = p
		}
	}
	if err := f.require("session"); err != nil {
		return nil, err
	}
	if r.Session == "" {
		if taskField.Name != "" {
			return nil, f.errorf(taskField, "'%s' with an empty session", taskField.Name)
		}
		if len(ms) > 1 {
			return nil, f.errorf(ms[1][0], "a manifest follows an empty session")
		}
		r.Extra = f.extra
		return r, nil
	}
	if err := f.require("result-url"); err != nil {
		return nil, err
	}
	if err := f.followedByOne(ms, "task"); err != nil {
		return nil, err
	}
	if r.Task, err = ParseTask(ms[1], file, mode); err != nil {
		return nil, err
	}
	r.Extra = f.extra
	return r, nil
}

// Manifests returns the task response stream: the header, then the task
// if there is one.
func (r *TaskResponse) Manifests() []Manifest {
	b := newBuilder()
	b.add("session", r.Session)
	b.opt("challenge", r.Challenge)
	b.opt("result-url", r.ResultURL)
	for _, u := range r.UploadURLs {
		b.add(u.Type+uploadSuffix, u.URL)
	}
	b.opt("agent-checksum", r.AgentChecksum)
	b.extra(r.Extra)
	ms := []Manifest{b.m}
	if r.Task != nil {
		ms = append(ms, r.Task.Manifest())
	}
	return ms
}

// ResultRequest is bbot's result request: what an agent POSTs to the
// result URL of a task. In the stream, the header manifest is followed by
// the result manifest.
type ResultRequest struct {
	// Session is the task response's session.
	Session string
	// Challenge is the task response's challenge signed with the agent's
	// private key, base64-encoded.
	Challenge string
	// AgentChecksum identifies the agent that built the task.
	AgentChecksum string
	Result        Result
	// Extra holds the header's fields kept in lenient mode.
	Extra []Pair
}

// ParseResultRequest validates ms as a result request stream.
func ParseResultRequest(ms []Manifest, file string, mode Mode) (*ResultRequest, error) {
	f, err := streamHeader("result request", ms, file, mode)
	if err != nil {
		return nil, err
	}
	r := &ResultRequest{}
	for _, p := range f.pairs() {
		switch p.Name {
		case "session":
			err = f.set(p, &r.Session, word)
		case "challenge":
			err = f.set(p, &r.Challenge, base64Text)
		case "agent-checksum":
			err = f.set(p, &r.AgentChecksum, word)
		default:
			err = f.unknown(p)
		}
		if err != nil {
			return nil, err
		}
	}
	if err := f.require("session"); err != nil {
		return nil, err
	}
	if err := f.followedByOne(ms, "result"); err != nil {
		return nil, err
	}
	res, err := ParseResult(ms[1], file, mode)
	if err != nil {
		return nil, err
	}
	r.Result = *res
	r.Extra = f.extra
	return r, nil
}

// Manifests returns the result request stream: the header, then the
// result.
func (r *ResultRequest) Manifests() []Manifest {
	b := newBuilder()
	b.add("session", r.Session)
	b.opt("challenge", r.Challenge)
	b.opt("agent-checksum", r.AgentChecksum)
	b.extra(r.Extra)
	return []Manifest{b.m, r.Result.Manifest()}
}
