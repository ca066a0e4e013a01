package controller

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/store"
)

// The headers of the live exchanges, an extension of ours: while a task
// runs, its agent POSTs the output of its operations as it is written
// (/live/log), the VM's and the operations' progress (/live/event), and,
// when it has nothing to send, a poll (/live/poll). Each request names its
// session; the session's id is the agent's proof that the task is its own.
// Each answer carries CancelHeader when the task is being cancelled, so
// that the agent stops it within a poll.
const (
	SessionHeader   = "Buildfarm-Session"
	OperationHeader = "Buildfarm-Operation"
	OffsetHeader    = "Buildfarm-Offset"
	// CancelHeader, in an answer, is why the task is cancelled.
	CancelHeader = "Buildfarm-Cancel"
	// LogFullHeader, in an answer to /live/log, says that the session's
	// live log has reached its limit: more is dropped.
	LogFullHeader = "Buildfarm-Log-Full"
)

// Body limits of the live exchanges.
const (
	MaxLiveChunk = 64 << 10
	MaxLiveEvent = 4 << 10
)

// operationRE is what an operation's name may be (configure, update, ...).
var operationRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)

// liveEvents are the event kinds an agent may report.
var liveEvents = map[string]bool{store.EventBooted: true, store.EventStarted: true, store.EventFinished: true}

// handleLiveLog stores a chunk of a running operation's output.
func (s *Server) handleLiveLog(w http.ResponseWriter, r *http.Request) {
	session, err := liveSession(r)
	if err != nil {
		s.writeProtocolError(w, r, err)
		return
	}
	op := r.Header.Get(OperationHeader)
	off, err := strconv.ParseInt(r.Header.Get(OffsetHeader), 10, 64)
	switch {
	case !operationRE.MatchString(op):
		err = protoErrorf(http.StatusBadRequest, "%s %q: not an operation name", OperationHeader, op)
	case err != nil || off < 0:
		err = protoErrorf(http.StatusBadRequest, "%s %q: not an offset (a number from 0)", OffsetHeader, r.Header.Get(OffsetHeader))
	}
	if err != nil {
		s.writeProtocolError(w, r, err)
		return
	}
	data, err := readLimited(w, r, MaxLiveChunk, "live log chunk")
	if err != nil {
		s.writeProtocolError(w, r, err)
		return
	}
	l, err := s.store.AppendLog(r.Context(), store.LogChunk{Session: session, Operation: op, Offset: off, Data: data}, s.opts.LiveLogLimit)
	if err != nil {
		s.writeProtocolError(w, r, liveError(session, err))
		return
	}
	if l.Kept < len(data) && l.LogBytes-int64(l.Kept) < s.opts.LiveLogLimit {
		// This chunk reached the limit: say so in the timeline, once.
		s.store.AddEvent(r.Context(), store.Event{Session: session, Kind: store.EventTruncated, Operation: op,
			Detail: fmt.Sprintf("the live log reached its limit of %d bytes; the rest is in the result", s.opts.LiveLogLimit)})
	}
	if l.Kept > 0 {
		s.liveWake.notify()
	}
	if l.LogBytes >= s.opts.LiveLogLimit {
		w.Header().Set(LogFullHeader, "1")
	}
	s.answerLive(w, l)
}

// handleLiveEvent records an event the agent reports: a manifest with
// event (booted, started or finished), and operation, status and detail
// as the event has them.
func (s *Server) handleLiveEvent(w http.ResponseWriter, r *http.Request) {
	session, err := liveSession(r)
	if err != nil {
		s.writeProtocolError(w, r, err)
		return
	}
	ms, err := readManifests(w, r, MaxLiveEvent, liveEventLimits, "live event")
	if err != nil {
		s.writeProtocolError(w, r, err)
		return
	}
	e, err := parseLiveEvent(ms)
	if err != nil {
		s.writeProtocolError(w, r, err)
		return
	}
	e.Session, e.At = session, time.Now().UTC()
	l, err := s.store.AddEvent(r.Context(), e)
	if err != nil {
		s.writeProtocolError(w, r, liveError(session, err))
		return
	}
	s.liveWake.notify()
	s.answerLive(w, l)
}

// parseLiveEvent reads a live event's manifest.
// liveEventLimits bound a live event's stream: one manifest of a few
// fields (one more of each, for parseLiveEvent to name).
var liveEventLimits = manifest.Limits{Manifests: 2, Pairs: 64}

func parseLiveEvent(ms []manifest.Manifest) (store.Event, error) {
	var e store.Event
	if len(ms) != 1 {
		return e, protoErrorf(http.StatusBadRequest, "live event: %d manifests, want 1", len(ms))
	}
	for _, p := range ms[0][1:] {
		switch p.Name {
		case "event":
			e.Kind = p.Value
		case "operation":
			e.Operation = p.Value
		case "status":
			e.Status = p.Value
		case "detail":
			e.Detail = p.Value
		default:
			return e, protoErrorf(http.StatusBadRequest, "live event: unknown field %q", p.Name)
		}
	}
	switch {
	case !liveEvents[e.Kind]:
		return e, protoErrorf(http.StatusBadRequest, "live event %q: not booted, started or finished", e.Kind)
	case e.Operation != "" && !operationRE.MatchString(e.Operation):
		return e, protoErrorf(http.StatusBadRequest, "live event: operation %q: not an operation name", e.Operation)
	case e.Status != "":
		if _, err := manifest.ParseStatus(e.Status); err != nil {
			return e, protoErrorf(http.StatusBadRequest, "live event: status %q: %v", e.Status, err)
		}
	}
	if len(e.Detail) > 1024 {
		e.Detail = e.Detail[:1024]
	}
	return e, nil
}

// handleLivePoll answers whether the session's task is being cancelled.
func (s *Server) handleLivePoll(w http.ResponseWriter, r *http.Request) {
	session, err := liveSession(r)
	if err != nil {
		s.writeProtocolError(w, r, err)
		return
	}
	io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, MaxLiveEvent))
	l, err := s.store.Live(r.Context(), session)
	if err != nil {
		s.writeProtocolError(w, r, liveError(session, err))
		return
	}
	s.answerLive(w, l)
}

func (s *Server) answerLive(w http.ResponseWriter, l store.Live) {
	if l.Cancel != "" {
		// One line: a header value cannot hold more.
		w.Header().Set(CancelHeader, strings.Join(strings.Fields(l.Cancel), " "))
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
}

func liveSession(r *http.Request) (string, error) {
	s := r.Header.Get(SessionHeader)
	if s == "" || len(s) > 128 {
		return "", protoErrorf(http.StatusBadRequest, "no %s header naming the session", SessionHeader)
	}
	return s, nil
}

// liveError maps the store's session errors to the protocol's statuses,
// as for results.
func liveError(session string, err error) error {
	switch {
	case errors.Is(err, store.ErrUnknownSession):
		return protoErrorf(http.StatusNotFound, "session %s: unknown session", session)
	case errors.Is(err, store.ErrSessionExpired):
		return protoErrorf(http.StatusGone, "session %s: session no longer active", session)
	}
	return err
}

// readLimited reads a request body of at most limit bytes.
func readLimited(w http.ResponseWriter, r *http.Request, limit int64, name string) ([]byte, error) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return nil, protoErrorf(http.StatusRequestEntityTooLarge, "%s larger than %d bytes", name, limit)
	}
	if err != nil {
		return nil, protoErrorf(http.StatusBadRequest, "%s: %v", name, err)
	}
	return data, nil
}
