package controller

import (
	"bytes"
	"encoding/json"
	"net/http"
	"time"

	"github.com/buildfarm/buildfarm/internal/store"
)

// The submit API's JSON documents. Times are RFC 3339 in UTC; durations
// are Go duration strings ("90m").

// SubmitRequest is a submission as POST /api/v1/submissions takes it.
// Exactly one of Archive and Git gives the sources.
type SubmitRequest struct {
	// Name and Version of the package; empty takes the template's.
	Name    string `json:"name,omitempty"`
	Version string `json:"version,omitempty"`
	// Archive is the SHA-256 of an archive uploaded to /api/v1/archives.
	Archive string `json:"archive,omitempty"`
	// Git is a repository and revision for the controller to fetch.
	Git *GitSource `json:"git,omitempty"`
	// Template is a task manifest: the steps (buildfarm-configure, ...)
	// and any other task fields. Its machine and target are set per
	// build configuration, its name and version from the submission.
	Template string `json:"template"`
	// Configs names build configurations or classes ("default" when
	// empty; "all" is every configuration).
	Configs []string `json:"configs,omitempty"`
	// Toolchain is the toolchain name the agents need ("" any).
	Toolchain string `json:"toolchain,omitempty"`
	Priority  int    `json:"priority,omitempty"`
	// Timeout is the build timeout ("" the controller's, which is also
	// the longest allowed).
	Timeout   string `json:"timeout,omitempty"`
	Submitter string `json:"submitter,omitempty"`
}

// GitSource is a git repository URL and a revision (a commit, branch or
// tag) in it.
type GitSource struct {
	URL      string `json:"url"`
	Revision string `json:"revision"`
}

// ArchiveInfo answers an archive upload.
type ArchiveInfo struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// Submission is a submission with its tasks.
type Submission struct {
	ID         int64     `json:"id"`
	Created    time.Time `json:"created"`
	Name       string    `json:"name"`
	Version    string    `json:"version"`
	Archive    string    `json:"archive,omitempty"`
	Repository string    `json:"repository,omitempty"`
	Revision   string    `json:"revision,omitempty"`
	Configs    []string  `json:"configs,omitempty"`
	Toolchain  string    `json:"toolchain,omitempty"`
	Priority   int       `json:"priority"`
	Submitter  string    `json:"submitter,omitempty"`
	Tasks      []Task    `json:"tasks,omitempty"`
}

// Task is one task of a submission. Its session is not shown: it is the
// agent's to report with.
type Task struct {
	ID             int64      `json:"id"`
	SubmissionID   int64      `json:"submission"`
	Name           string     `json:"name"`
	Version        string     `json:"version"`
	Config         string     `json:"config"`
	MachinePattern string     `json:"machine_pattern"`
	Target         string     `json:"target"`
	Toolchain      string     `json:"toolchain,omitempty"`
	Priority       int        `json:"priority"`
	Timeout        string     `json:"timeout"`
	State          string     `json:"state"`
	Attempts       int        `json:"attempts"`
	Created        time.Time  `json:"created"`
	Claimed        *time.Time `json:"claimed,omitempty"`
	Finished       *time.Time `json:"finished,omitempty"`
	Agent          string     `json:"agent,omitempty"`
	Machine        string     `json:"machine,omitempty"`
	LeaseExpires   *time.Time `json:"lease_expires,omitempty"`
	Status         string     `json:"status,omitempty"`
	Reason         string     `json:"reason,omitempty"`
	// Cancel, while the task runs, is why it is being cancelled.
	Cancel string `json:"cancel,omitempty"`
}

// Queue is the queue's depth and its oldest task.
type Queue struct {
	Depth  int   `json:"depth"`
	Oldest *Task `json:"oldest,omitempty"`
	// Tasks are the next tasks to go, oldest first (at most 100).
	Tasks []Task `json:"tasks,omitempty"`
}

// Agent is an agent as the controller last saw it.
type Agent struct {
	Name        string    `json:"name"`
	Toolchain   string    `json:"toolchain"`
	Version     string    `json:"toolchain_version"`
	Fingerprint string    `json:"fingerprint,omitempty"`
	Machines    []string  `json:"machines"`
	LastSeen    time.Time `json:"last_seen"`
	Address     string    `json:"address,omitempty"`
	// Running are the tasks it is running.
	Running []Task `json:"running,omitempty"`
}

// apiErrorBody is the body of an API error.
type apiErrorBody struct {
	Error string `json:"error"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

func taskJSON(t *store.Task) Task {
	return Task{
		ID: t.ID, SubmissionID: t.SubmissionID, Name: t.Name, Version: t.Version,
		Config: t.Config, MachinePattern: t.MachinePattern, Target: t.Target,
		Toolchain: t.Toolchain, Priority: t.Priority, Timeout: t.Timeout.String(),
		State: string(t.State), Attempts: t.Attempts, Created: t.Created.UTC(),
		Claimed: timePtr(t.Claimed), Finished: timePtr(t.Finished),
		Agent: t.Agent, Machine: t.Machine, LeaseExpires: timePtr(t.LeaseExpires),
		Status: t.Status, Reason: t.Reason, Cancel: t.Cancel,
	}
}

func submissionJSON(s *store.Submission, tasks []*store.Task) Submission {
	j := Submission{
		ID: s.ID, Created: s.Created.UTC(), Name: s.Name, Version: s.Version,
		Archive: s.Archive, Repository: s.Repository, Revision: s.Revision,
		Configs: s.Configs, Toolchain: s.Toolchain, Priority: s.Priority, Submitter: s.Submitter,
	}
	for _, t := range tasks {
		j.Tasks = append(j.Tasks, taskJSON(t))
	}
	return j
}

func agentJSON(a store.Agent) Agent {
	j := Agent{Name: a.Name, Toolchain: a.Toolchain, Version: a.Version, Fingerprint: a.Fingerprint,
		LastSeen: a.LastSeen.UTC(), Address: a.Address, Machines: []string{}}
	for _, m := range a.Machines {
		j.Machines = append(j.Machines, m.Name)
	}
	return j
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func apiError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, apiErrorBody{Error: err.Error()})
}

// jsonUnmarshalStrict decodes data into v, refusing unknown fields.
func jsonUnmarshalStrict(data []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	return d.Decode(v)
}
