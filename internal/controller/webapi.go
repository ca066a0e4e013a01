package controller

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/store"
)

// The dashboard's JSON documents: each page has its twin under /api/v1/.

// BuildList is the builds page: tasks newest first, as the filter selects
// them, a page of them.
type BuildList struct {
	Filter  BuildFilter `json:"filter"`
	Page    int         `json:"page"`
	PerPage int         `json:"per_page"`
	More    bool        `json:"more"` // there is a next page
	Tasks   []Task      `json:"tasks"`
}

// BuildFilter selects builds; empty fields select all.
type BuildFilter struct {
	Name    string `json:"name,omitempty"`
	Version string `json:"version,omitempty"`
	Config  string `json:"config,omitempty"`
	Machine string `json:"machine,omitempty"`
	Agent   string `json:"agent,omitempty"`
	// Status is a result status (success, error, ...) or a state (queued,
	// running).
	Status string `json:"status,omitempty"`
}

// Build is one build's page: the task, its timeline, its operations from
// the result (each log paged), and its live log while it runs.
type Build struct {
	Task       Task        `json:"task"`
	Timeline   []Event     `json:"timeline"`
	Operations []Operation `json:"operations,omitempty"`
	// Live is the live log of its current session while it runs, and of
	// its last one after, until that is pruned.
	Live *LiveLog `json:"live,omitempty"`
}

// Event is an entry of a build's timeline.
type Event struct {
	At        time.Time `json:"at"`
	Kind      string    `json:"kind"`
	Operation string    `json:"operation,omitempty"`
	Status    string    `json:"status,omitempty"`
	Detail    string    `json:"detail,omitempty"`
}

// Operation is one operation of a result: its status and a page of its
// log (Lines lines in all, LogPages pages of LogPageLines).
type Operation struct {
	Operation string `json:"operation"`
	Status    string `json:"status"`
	Log       string `json:"log"`
	Lines     int    `json:"lines"`
	Page      int    `json:"page"`
	Pages     int    `json:"pages"`
}

// LiveLog is a session's live log: chunks of its operations' output as
// they were written.
type LiveLog struct {
	Chunks []LogChunk `json:"chunks"`
	// Last is the last chunk's id: ask for ?after=LAST to get what came
	// since.
	Last int64 `json:"last"`
	// Truncated says the live log reached its limit (the result has the
	// log).
	Truncated bool `json:"truncated"`
	// Done says the task has ended: no more will come.
	Done bool `json:"done"`
}

// LogChunk is a piece of an operation's output.
type LogChunk struct {
	ID        int64     `json:"id"`
	Operation string    `json:"operation"`
	Offset    int64     `json:"offset"`
	At        time.Time `json:"at"`
	Text      string    `json:"text"`
}

// MachineInfo is a machine name and the agents that offer it.
type MachineInfo struct {
	Name    string   `json:"name"`
	Summary string   `json:"summary,omitempty"`
	Agents  []string `json:"agents"`
}

// LogPageLines is how many lines of an operation's log a page shows.
const LogPageLines = 1000

// buildsPerPage is how many builds a page of the builds list shows.
const buildsPerPage = 50

// states a build filter's status may name besides the results' statuses.
var filterStates = []string{string(store.Queued), string(store.Running), string(store.Done)}

// buildList reads the builds page that r's query asks for: the filter's
// fields, and page (from 1).
func (s *Server) buildList(r *http.Request) (*BuildList, error) {
	q := r.URL.Query()
	f := BuildFilter{Name: q.Get("name"), Version: q.Get("version"), Config: q.Get("config"),
		Machine: q.Get("machine"), Agent: q.Get("agent"), Status: q.Get("status")}
	page, err := pageNumber(q.Get("page"))
	if err != nil {
		return nil, err
	}
	tf := store.TaskFilter{Name: f.Name, Version: f.Version, Config: f.Config, Machine: f.Machine, Agent: f.Agent,
		Limit: buildsPerPage + 1, Offset: (page - 1) * buildsPerPage}
	switch {
	case f.Status == "":
	case slices.Contains(filterStates, f.Status):
		tf.State = store.TaskState(f.Status)
	default:
		if _, err := manifest.ParseStatus(f.Status); err != nil {
			return nil, badf("status %q: not a state (%s) or a result status: %v", f.Status, strings.Join(filterStates, ", "), err)
		}
		tf.Status = f.Status
	}
	tasks, err := s.store.Tasks(r.Context(), tf)
	if err != nil {
		return nil, fmt.Errorf("builds: %w", err)
	}
	l := &BuildList{Filter: f, Page: page, PerPage: buildsPerPage, Tasks: []Task{}}
	if len(tasks) > buildsPerPage {
		l.More, tasks = true, tasks[:buildsPerPage]
	}
	for _, t := range tasks {
		l.Tasks = append(l.Tasks, taskJSON(t))
	}
	return l, nil
}

// pageNumber reads a page parameter: a number from 1, 1 when empty.
func pageNumber(v string) (int, error) {
	if v == "" {
		return 1, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 100000 {
		return 0, badf("page %q: not a number from 1 to 100000", v)
	}
	return n, nil
}

// build reads a build's page; r's query may ask for a page of one
// operation's log (op=NAME&page=N).
func (s *Server) build(r *http.Request, id int64) (*Build, error) {
	ctx := r.Context()
	t, err := s.store.Task(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("task %d: %w", id, err)
	}
	evs, err := s.store.Timeline(ctx, id)
	if err != nil {
		return nil, err
	}
	b := &Build{Task: taskJSON(t), Timeline: []Event{}}
	for _, e := range evs {
		b.Timeline = append(b.Timeline, Event{At: e.At.UTC(), Kind: e.Kind, Operation: e.Operation, Status: e.Status, Detail: e.Detail})
	}
	if t.State == store.Done {
		q := r.URL.Query()
		page, err := pageNumber(q.Get("page"))
		if err != nil {
			return nil, err
		}
		if b.Operations, err = s.operations(r, id, q.Get("op"), page); err != nil {
			return nil, err
		}
	}
	if t.Session != "" {
		if b.Live, err = s.liveLog(r, t, 0); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// operations reads a done task's result and pages its operations' logs:
// op's log at page, the others' at their first page.
func (s *Server) operations(r *http.Request, id int64, op string, page int) ([]Operation, error) {
	res, err := s.readResult(r, id)
	if err != nil || res == nil {
		return nil, err
	}
	var ops []Operation
	for _, o := range res.Results {
		p := 1
		if o.Operation == op {
			p = page
		}
		lines := strings.SplitAfter(o.Log, "\n")
		if len(lines) > 0 && lines[len(lines)-1] == "" {
			lines = lines[:len(lines)-1]
		}
		pages := max(1, (len(lines)+LogPageLines-1)/LogPageLines)
		p = min(p, pages)
		from := (p - 1) * LogPageLines
		ops = append(ops, Operation{Operation: o.Operation, Status: o.Status.String(), Lines: len(lines), Page: p, Pages: pages,
			Log: strings.Join(lines[from:min(from+LogPageLines, len(lines))], "")})
	}
	return ops, nil
}

// readResult reads and parses a done task's result manifest; nil when it has
// none (it was cancelled while queued, or ended by its lease).
func (s *Server) readResult(r *http.Request, id int64) (*manifest.Result, error) {
	data, err := s.store.Result(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	ms, err := manifest.Parse(bytes.NewReader(data), fmt.Sprintf("result of task %d", id))
	if err != nil {
		return nil, err
	}
	if ms.Len() != 1 {
		return nil, fmt.Errorf("result of task %d: %d manifests, want 1", id, ms.Len())
	}
	return manifest.ParseResult(ms.Manifest(0), fmt.Sprintf("result of task %d", id), manifest.Lenient)
}

// liveLog reads the live log of t's last session after chunk id after.
func (s *Server) liveLog(r *http.Request, t *store.Task, after int64) (*LiveLog, error) {
	l := &LiveLog{Chunks: []LogChunk{}, Last: after, Done: t.State == store.Done}
	for {
		cs, err := s.store.LiveLog(r.Context(), t.ID, t.Session, l.Last, 0)
		if err != nil {
			return nil, err
		}
		for _, c := range cs {
			l.Chunks = append(l.Chunks, LogChunk{ID: c.ID, Operation: c.Operation, Offset: c.Offset, At: c.At.UTC(),
				Text: strings.ToValidUTF8(string(c.Data), "\uFFFD")})
			l.Last = c.ID
		}
		if len(cs) < 1000 {
			break
		}
	}
	evs, err := s.store.Timeline(r.Context(), t.ID)
	if err != nil {
		return nil, err
	}
	for _, e := range evs {
		if e.Kind == store.EventTruncated && e.Session == t.Session {
			l.Truncated = true
		}
	}
	return l, nil
}

// machines lists the machines the agents offer, by name, with the agents
// offering each.
func (s *Server) machines(r *http.Request) ([]MachineInfo, error) {
	as, err := s.store.Agents(r.Context())
	if err != nil {
		return nil, fmt.Errorf("machines: %w", err)
	}
	byName := map[string]*MachineInfo{}
	for _, a := range as {
		for _, m := range a.Machines {
			mi := byName[m.Name]
			if mi == nil {
				mi = &MachineInfo{Name: m.Name, Summary: m.Summary}
				byName[m.Name] = mi
			}
			if !slices.Contains(mi.Agents, a.Name) {
				mi.Agents = append(mi.Agents, a.Name)
			}
		}
	}
	out := []MachineInfo{}
	for _, mi := range byName {
		out = append(out, *mi)
	}
	slices.SortFunc(out, func(a, b MachineInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func (s *Server) handleBuildsJSON(w http.ResponseWriter, r *http.Request) {
	l, err := s.buildList(r)
	if err != nil {
		s.writeAPIError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, l)
}

func (s *Server) handleBuildJSON(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		s.writeAPIError(w, r, err)
		return
	}
	b, err := s.build(r, id)
	if err != nil {
		s.writeAPIError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, b)
}

// handleBuildLogJSON is a build's live log after ?after=ID.
func (s *Server) handleBuildLogJSON(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		s.writeAPIError(w, r, err)
		return
	}
	after, err := strconv.ParseInt(cmp.Or(r.URL.Query().Get("after"), "0"), 10, 64)
	if err != nil || after < 0 {
		s.writeAPIError(w, r, badf("after %q: not a chunk id", r.URL.Query().Get("after")))
		return
	}
	t, err := s.store.Task(r.Context(), id)
	if err != nil {
		s.writeAPIError(w, r, fmt.Errorf("task %d: %w", id, err))
		return
	}
	l, err := s.liveLog(r, t, after)
	if err != nil {
		s.writeAPIError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, l)
}

func (s *Server) handleMachinesJSON(w http.ResponseWriter, r *http.Request) {
	ms, err := s.machines(r)
	if err != nil {
		s.writeAPIError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ms)
}

// CancelRequest is the body of POST /api/v1/tasks/ID/cancel (optional).
type CancelRequest struct {
	Reason string `json:"reason,omitempty"`
}

// handleCancelJSON cancels a task (admin).
func (s *Server) handleCancelJSON(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		s.writeAPIError(w, r, err)
		return
	}
	var req CancelRequest
	if err := readJSON(w, r, &req); err != nil {
		s.writeAPIError(w, r, err)
		return
	}
	t, err := s.cancel(r, id, cmp.Or(req.Reason, "cancelled through the API"))
	if err != nil {
		s.writeAPIError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, taskJSON(t))
}

// handleRebuildJSON queues a copy of a finished task (admin), and answers
// the new task.
func (s *Server) handleRebuildJSON(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		s.writeAPIError(w, r, err)
		return
	}
	t, err := s.rebuild(r, id)
	if err != nil {
		s.writeAPIError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, taskJSON(t))
}

func (s *Server) cancel(r *http.Request, id int64, reason string) (*store.Task, error) {
	if len(reason) > 500 {
		return nil, badf("reason: longer than 500 bytes")
	}
	t, err := s.store.Cancel(r.Context(), id, reason, time.Now().UTC())
	if errors.Is(err, store.ErrFinished) {
		return nil, &badRequest{code: http.StatusConflict, err: err}
	}
	if err != nil {
		return nil, err
	}
	s.log.Info("task cancelled", "task", id, "state", t.State, "reason", reason, "from", r.RemoteAddr)
	s.liveWake.notify()
	return t, nil
}

func (s *Server) rebuild(r *http.Request, id int64) (*store.Task, error) {
	t, err := s.store.Rebuild(r.Context(), id, time.Now().UTC())
	if errors.Is(err, store.ErrNotFinished) {
		return nil, &badRequest{code: http.StatusConflict, err: err}
	}
	if err != nil {
		return nil, err
	}
	s.log.Info("task rebuilt", "task", id, "new_task", t.ID, "from", r.RemoteAddr)
	s.wake.notify()
	return t, nil
}

// readJSON reads an optional small JSON body into v.
func readJSON(w http.ResponseWriter, r *http.Request, v any) error {
	data, err := readLimited(w, r, 64<<10, "request")
	if err != nil {
		return badf("%v", err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	if err := jsonUnmarshalStrict(data, v); err != nil {
		return badf("request: %v", err)
	}
	return nil
}
