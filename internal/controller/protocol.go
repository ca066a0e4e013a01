package controller

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/buildfarm/buildfarm/internal/auth"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/store"
)

// WaitHeader is the task request header with which an agent asks the
// controller to hold the request, up to that many seconds, until there is
// a task for it (long polling).
const WaitHeader = "Buildfarm-Wait"

// protocolError is an error of the agent protocol with its HTTP status.
type protocolError struct {
	code int
	msg  string
}

func (e *protocolError) Error() string { return e.msg }

func protoErrorf(code int, format string, args ...any) *protocolError {
	return &protocolError{code: code, msg: fmt.Sprintf(format, args...)}
}

// writeProtocolError answers err as plain text: its status for a
// protocolError, 500 otherwise.
func (s *Server) writeProtocolError(w http.ResponseWriter, r *http.Request, err error) {
	code := http.StatusInternalServerError
	var pe *protocolError
	var me *manifest.Error
	switch {
	case errors.As(err, &pe):
		code = pe.code
	case errors.As(err, &me):
		code = http.StatusBadRequest
	}
	if code >= 500 {
		s.log.Error("request failed", "path", r.URL.Path, "from", r.RemoteAddr, "err", err)
	} else {
		s.log.Warn("request refused", "path", r.URL.Path, "from", r.RemoteAddr, "status", code, "err", err)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	fmt.Fprintln(w, err)
}

// readManifests reads a request body of at most limit bytes as a manifest
// stream within lim; name is what the errors call it.
func readManifests(w http.ResponseWriter, r *http.Request, limit int64, lim manifest.Limits, name string) ([]manifest.Manifest, error) {
	data, err := readLimited(w, r, limit, name)
	if err != nil {
		return nil, err
	}
	st, err := lim.Parse(bytes.NewReader(data), name)
	if err != nil {
		return nil, err
	}
	return st.Manifests(), nil
}

func writeManifests(w http.ResponseWriter, ms []manifest.Manifest) error {
	var b bytes.Buffer
	if err := manifest.Serialize(&b, ms); err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/manifest")
	_, err := w.Write(b.Bytes())
	return err
}

func (s *Server) handleTask(w http.ResponseWriter, r *http.Request) {
	resp, err := s.task(w, r)
	if err != nil {
		s.writeProtocolError(w, r, err)
		return
	}
	if err := writeManifests(w, resp.Manifests()); err != nil {
		s.log.Error("task response", "session", resp.Session, "err", err)
	}
}

// task answers a task request:
//
//  1. Read the request and the wait the agent asks for.
//  2. Authenticate: a registered fingerprint gets a challenge; with
//     authentication required, an agent without one gets 401.
//  3. Record the agent (at most every seeAgentEvery while it is
//     unchanged: a write per request would bound the controller by it).
//  4. Match its machines to the build configurations.
//  5. Claim a task; if there is none, wait (long polling) for a submit
//     or requeue here, or poll for one elsewhere, then claim again.
//  6. Answer with the session, the challenge, the result URL and the task
//     with its machine and archive URL; or an empty session.
func (s *Server) task(w http.ResponseWriter, r *http.Request) (*manifest.TaskResponse, error) {
	ctx := r.Context()
	// 1.
	ms, err := readManifests(w, r, MaxTaskRequest, manifest.TaskRequestLimits, "task request")
	if err != nil {
		return nil, err
	}
	req, err := manifest.ParseTaskRequest(ms, "task request", manifest.Lenient)
	if err != nil {
		return nil, err
	}
	wait, err := waitFor(r.Header.Get(WaitHeader), s.opts.LongPoll)
	if err != nil {
		return nil, err
	}
	// 2.
	required, err := s.authRequired(ctx)
	if err != nil {
		return nil, err
	}
	pub, err := s.agentKey(ctx, req.Fingerprint)
	if err != nil {
		return nil, err
	}
	if required && pub == nil {
		if req.Fingerprint == "" {
			return nil, protoErrorf(http.StatusUnauthorized, "agent %s: authentication required: the task request has no fingerprint (start the agent with --auth-key)", req.Agent)
		}
		return nil, protoErrorf(http.StatusUnauthorized, "agent %s: authentication required: key fingerprint %s is not registered (buildfarm controller key add)", req.Agent, req.Fingerprint)
	}
	// 3.
	now := time.Now().UTC()
	agent := store.Agent{
		Name: req.Agent, Toolchain: req.ToolchainName, Version: req.ToolchainVersion,
		Fingerprint: req.Fingerprint, LastSeen: now, Address: remoteHost(r),
	}
	for _, m := range req.Machines {
		agent.Machines = append(agent.Machines, store.Machine{ID: m.ID, Name: m.Name, Summary: m.Summary})
	}
	if s.seen.due(agent, now) {
		if err := s.store.SeeAgent(ctx, agent); err != nil {
			s.seen.forget(agent.Name)
			return nil, fmt.Errorf("agent %s: %w", req.Agent, err)
		}
	}
	// 4.
	machines := s.opts.Buildtab.Machines(req.Machines)
	if len(machines) == 0 {
		s.log.Debug("no configuration for the agent's machines", "agent", req.Agent, "machines", len(req.Machines))
		return &manifest.TaskResponse{}, nil
	}
	// 5.
	c := store.Claim{Agent: req.Agent, Toolchain: req.ToolchainName, Machines: machines}
	if c.Session, err = newSession(); err != nil {
		return nil, err
	}
	if pub != nil {
		c.Fingerprint = req.Fingerprint
		if c.Challenge, err = auth.NewChallenge(); err != nil {
			return nil, err
		}
	}
	t, err := s.claim(ctx, c, wait)
	if errors.Is(err, store.ErrNoTask) {
		return &manifest.TaskResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	// 6.
	base := s.baseURL(r)
	task, err := s.taskManifest(t, base)
	if err != nil {
		// The session lapses with its lease and the task is queued
		// again; nothing better can be done with a manifest that the
		// submit API accepted and we cannot read back.
		return nil, fmt.Errorf("task %d: %w", t.ID, err)
	}
	if t.Attempts == 1 {
		s.metrics.dispatch.Observe(t.Claimed.Sub(t.Created).Seconds())
	}
	s.log.Info("task given", "task", t.ID, "name", t.Name, "version", t.Version, "config", t.Config,
		"agent", req.Agent, "machine", t.Machine, "attempt", t.Attempts, "challenged", c.Challenge != "")
	return &manifest.TaskResponse{
		Session:   c.Session,
		Challenge: c.Challenge,
		ResultURL: base + "/result",
		Task:      task,
	}, nil
}

// claim claims a task, waiting up to wait for one to be queued: woken
// by submits and requeues in this process, and polling every
// PollInterval for those of other controllers. It gives up, with
// ErrNoTask, when the client goes away or the server stops.
func (s *Server) claim(ctx context.Context, c store.Claim, wait time.Duration) (*store.Task, error) {
	deadline := time.Now().Add(wait)
	var timer *time.Timer
	for {
		woken := s.wake.wait()
		c.Now = time.Now().UTC()
		// The lease: the task's own build timeout (which submit sets,
		// at most BuildTimeout) plus the margin.
		c.LeaseMargin = s.opts.LeaseMargin
		t, err := s.store.Claim(ctx, c)
		if !errors.Is(err, store.ErrNoTask) {
			if err != nil {
				return nil, fmt.Errorf("claim for agent %s: %w", c.Agent, err)
			}
			return t, nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, store.ErrNoTask
		}
		d := min(left, s.opts.PollInterval)
		if timer == nil {
			timer = time.NewTimer(d)
			defer timer.Stop()
		} else {
			timer.Reset(d)
		}
		select {
		case <-woken:
		case <-timer.C:
		case <-ctx.Done():
			return nil, store.ErrNoTask
		case <-s.stopping:
			return nil, store.ErrNoTask
		}
	}
}

// waitFor reads a Buildfarm-Wait header: seconds, bounded by limit.
func waitFor(h string, limit time.Duration) (time.Duration, error) {
	if h == "" {
		return 0, nil
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(h), 64)
	if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, protoErrorf(http.StatusBadRequest, "%s: %q: not a number of seconds", WaitHeader, h)
	}
	return min(time.Duration(f*float64(time.Second)), limit), nil
}

// taskManifest reads a claimed task's stored manifest and sets its machine
// and the URL of its archive.
func (s *Server) taskManifest(t *store.Task, base string) (*manifest.Task, error) {
	ms, err := manifest.Parse(strings.NewReader(t.Manifest), fmt.Sprintf("task %d", t.ID))
	if err != nil {
		return nil, err
	}
	if ms.Len() != 1 {
		return nil, fmt.Errorf("stored manifest: %d manifests, want 1", ms.Len())
	}
	task, err := manifest.ParseTask(ms.Manifest(0), fmt.Sprintf("task %d", t.ID), manifest.Lenient)
	if err != nil {
		return nil, err
	}
	task.Machine = t.Machine
	if task.ArchiveSHA256 != "" {
		task.ArchiveURL = base + "/archives/" + task.ArchiveSHA256
	}
	return task, nil
}

// newSession returns an unguessable session id: 128 random bits in hex.
func newSession() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("session: %w", err)
	}
	return hex.EncodeToString(b), nil
}

func remoteHost(r *http.Request) string {
	if h, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return h
	}
	return r.RemoteAddr
}

func (s *Server) handleResult(w http.ResponseWriter, r *http.Request) {
	if err := s.result(w, r); err != nil {
		s.writeProtocolError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
}

// result checks and stores a result request:
//
//  1. Read it.
//  2. Find its session: unknown is 404.
//  3. When the session was challenged, verify the signature with the
//     key the challenge was sent to: missing or wrong is 403.
//  4. Check that the result is for the session's task.
//  5. Store it: an expired session is 410; a second result of a session
//     is accepted and not stored again; an interrupt requeues the task.
func (s *Server) result(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	// 1.
	ms, err := readManifests(w, r, MaxResultRequest, manifest.ResultRequestLimits, "result request")
	if err != nil {
		return err
	}
	rr, err := manifest.ParseResultRequest(ms, "result request", manifest.Lenient)
	if err != nil {
		return err
	}
	// 2.
	sess, err := s.store.Session(ctx, rr.Session)
	if errors.Is(err, store.ErrUnknownSession) {
		return protoErrorf(http.StatusNotFound, "session %s: unknown session", rr.Session)
	}
	if err != nil {
		return fmt.Errorf("session %s: %w", rr.Session, err)
	}
	// 3.
	if sess.Challenge != "" {
		if rr.Challenge == "" {
			return protoErrorf(http.StatusForbidden, "session %s: the challenge was not signed (the result request has no challenge field)", rr.Session)
		}
		pub, err := s.agentKey(ctx, sess.Fingerprint)
		if err != nil {
			return err
		}
		if pub == nil {
			return protoErrorf(http.StatusForbidden, "session %s: agent key %s is no longer registered", rr.Session, sess.Fingerprint)
		}
		if err := auth.Verify(pub, sess.Challenge, rr.Challenge); err != nil {
			return protoErrorf(http.StatusForbidden, "session %s: challenge signature: %v", rr.Session, err)
		}
	}
	// 4.
	if rr.Result.Name != sess.Name || rr.Result.Version != sess.Version {
		return protoErrorf(http.StatusBadRequest, "session %s: the result is for %s %s, the session's task is %s %s", rr.Session, rr.Result.Name, rr.Result.Version, sess.Name, sess.Version)
	}
	// 5.
	var text bytes.Buffer
	if err := manifest.Serialize(&text, []manifest.Manifest{rr.Result.Manifest()}); err != nil {
		return protoErrorf(http.StatusBadRequest, "result: %v", err)
	}
	status := rr.Result.Status.String()
	out, err := s.store.Complete(ctx, store.Result{Session: rr.Session, Status: status, Manifest: text.Bytes(), Now: time.Now().UTC()}, s.opts.MaxAttempts)
	switch {
	case errors.Is(err, store.ErrUnknownSession):
		return protoErrorf(http.StatusNotFound, "session %s: unknown session", rr.Session)
	case errors.Is(err, store.ErrSessionExpired):
		return protoErrorf(http.StatusGone, "session %s: session expired (the task's lease ran out; it was queued again or ended)", rr.Session)
	case err != nil:
		return fmt.Errorf("session %s: %w", rr.Session, err)
	}
	log := s.log.With("task", sess.TaskID, "name", sess.Name, "version", sess.Version, "config", sess.Config, "agent", sess.Agent, "status", status)
	s.metrics.results.WithLabelValues(status, out.String()).Inc()
	if out == store.Stored || out == store.Abandoned {
		s.metrics.build.WithLabelValues(sess.Machine).Observe(time.Since(sess.Created).Seconds())
		s.liveWake.notify()
	}
	switch out {
	case store.Stored:
		log.Info("result stored")
	case store.Duplicate:
		log.Info("result received again; stored once")
	case store.Requeued:
		log.Info("interrupted; task queued again")
		s.wake.notify()
	case store.Abandoned:
		log.Warn("interrupted too often; task ended abnormal")
	}
	return nil
}

// seeAgentEvery is how often an unchanged agent's requests are recorded
// (store.SeeAgent): its last-seen time may lag by this much.
const seeAgentEvery = 5 * time.Second

// seenAgents remembers when each agent was last recorded, and as what.
type seenAgents struct {
	mu sync.Mutex
	m  map[string]seenAgent
}

type seenAgent struct {
	at  time.Time
	sig string // what was recorded: toolchain, key, address, machines
}

// due reports whether a is to be recorded now: the first time, when it
// changed, and otherwise once every seeAgentEvery. A true answer counts
// as recorded.
func (s *seenAgents) due(a store.Agent, now time.Time) bool {
	var sig strings.Builder
	fmt.Fprintf(&sig, "%q %q %q %q", a.Toolchain, a.Version, a.Fingerprint, a.Address)
	for _, m := range a.Machines {
		fmt.Fprintf(&sig, " %q %q %q", m.ID, m.Name, m.Summary)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]seenAgent{}
	}
	last, ok := s.m[a.Name]
	if ok && last.sig == sig.String() && now.Sub(last.at) < seeAgentEvery && !now.Before(last.at) {
		return false
	}
	if len(s.m) >= 10000 { // bound the memory: forget the agents not seen lately
		for n, e := range s.m {
			if now.Sub(e.at) >= seeAgentEvery {
				delete(s.m, n)
			}
		}
	}
	s.m[a.Name] = seenAgent{at: now, sig: sig.String()}
	return true
}

// forget makes the agent's next request recorded.
func (s *seenAgents) forget(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, name)
}
