package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"
)

// txEvent records e in tx.
func (s *sqlStore) txEvent(ctx context.Context, tx *sql.Tx, e Event) error {
	if e.At.IsZero() {
		e.At = now()
	}
	_, err := s.txExec(ctx, tx, `INSERT INTO task_events (task_id, session, at, kind, operation, status, detail)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		e.TaskID, e.Session, ts(e.At), e.Kind, e.Operation, e.Status, e.Detail)
	if err != nil {
		return fmt.Errorf("event %s of task %d: %w", e.Kind, e.TaskID, err)
	}
	return nil
}

func (s *sqlStore) Cancel(ctx context.Context, id int64, reason string, at time.Time) (*Task, error) {
	if reason == "" {
		return nil, fmt.Errorf("cancel task %d: no reason given", id)
	}
	if at.IsZero() {
		at = now()
	}
	var t *Task
	err := s.write(ctx, func(tx *sql.Tx) error {
		var state, cancel string
		err := s.txRow(ctx, tx, `SELECT state, cancel FROM tasks WHERE id = $1`+s.d.forUpdate, id).Scan(&state, &cancel)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		switch {
		case state == string(Done):
			return ErrFinished
		case state == string(Running) && cancel != "":
			// Being cancelled already: the first reason stands.
			t, err = scanTask(s.txRow(ctx, tx, `SELECT `+taskColumns+` FROM tasks WHERE id = $1`, id))
			return err
		case state == string(Running):
			t, err = scanTask(s.txRow(ctx, tx, `UPDATE tasks SET cancel = $1 WHERE id = $2 RETURNING `+taskColumns, reason, id))
		default:
			t, err = scanTask(s.txRow(ctx, tx, `UPDATE tasks SET state = $1, status = $2, reason = $3, finished = $4
				WHERE id = $5 RETURNING `+taskColumns, string(Done), statusAbort, reason, ts(at), id))
			if err == nil {
				err = s.txEvent(ctx, tx, Event{TaskID: id, At: at, Kind: EventEnded, Status: statusAbort, Detail: "cancelled while queued"})
			}
		}
		if err != nil {
			return err
		}
		return s.txEvent(ctx, tx, Event{TaskID: id, Session: t.Session, At: at, Kind: EventCancel, Detail: reason})
	})
	if err != nil {
		return nil, fmt.Errorf("cancel task %d: %w", id, err)
	}
	return t, nil
}

func (s *sqlStore) Rebuild(ctx context.Context, id int64, at time.Time) (*Task, error) {
	if at.IsZero() {
		at = now()
	}
	var t *Task
	err := s.write(ctx, func(tx *sql.Tx) error {
		var state string
		err := s.txRow(ctx, tx, `SELECT state FROM tasks WHERE id = $1`, id).Scan(&state)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		if state != string(Done) {
			return ErrNotFinished
		}
		t, err = scanTask(s.txRow(ctx, tx, `INSERT INTO tasks
			(submission_id, name, version, config, machine_pattern, target, toolchain, priority,
			 manifest, timeout_ns, state, created)
			SELECT submission_id, name, version, config, machine_pattern, target, toolchain, priority,
				manifest, timeout_ns, $1, $2 FROM tasks WHERE id = $3
			RETURNING `+taskColumns, string(Queued), ts(at), id))
		if err != nil {
			return err
		}
		if err := s.txEvent(ctx, tx, Event{TaskID: t.ID, At: at, Kind: EventQueued, Detail: fmt.Sprintf("rebuild of task %d", id)}); err != nil {
			return err
		}
		return s.txEvent(ctx, tx, Event{TaskID: id, At: at, Kind: EventRebuilt, Detail: fmt.Sprintf("as task %d", t.ID)})
	})
	if err != nil {
		return nil, fmt.Errorf("rebuild task %d: %w", id, err)
	}
	return t, nil
}

// liveSession reads what Live says of session, in tx if not nil, and
// checks that the session is active and its task still in hand.
func (s *sqlStore) liveSession(ctx context.Context, tx *sql.Tx, session string) (Live, error) {
	q := `SELECT t.id, t.state, t.session, t.cancel, s.state FROM sessions s JOIN tasks t ON t.id = s.task_id WHERE s.id = $1`
	var row *sql.Row
	if tx != nil {
		row = s.txRow(ctx, tx, q+s.d.forUpdate, session)
	} else {
		row = s.readRow(ctx, q, session)
	}
	var l Live
	var taskState, taskSession, sessionState string
	err := row.Scan(&l.TaskID, &taskState, &taskSession, &l.Cancel, &sessionState)
	if errors.Is(err, sql.ErrNoRows) {
		return Live{}, ErrUnknownSession
	}
	if err != nil {
		return Live{}, err
	}
	if sessionState != sessionActive || taskState != string(Running) || taskSession != session {
		return Live{}, ErrSessionExpired
	}
	return l, nil
}

func (s *sqlStore) Live(ctx context.Context, session string) (Live, error) {
	l, err := s.liveSession(ctx, nil, session)
	if err != nil {
		return Live{}, fmt.Errorf("session %q: %w", session, err)
	}
	return l, nil
}

func (s *sqlStore) AddEvent(ctx context.Context, e Event) (Live, error) {
	if e.Kind == "" {
		return Live{}, fmt.Errorf("event of session %q: no kind", e.Session)
	}
	var l Live
	err := s.write(ctx, func(tx *sql.Tx) error {
		var err error
		if l, err = s.liveSession(ctx, tx, e.Session); err != nil {
			return err
		}
		e.TaskID = l.TaskID
		return s.txEvent(ctx, tx, e)
	})
	if err != nil {
		return Live{}, fmt.Errorf("session %q: %w", e.Session, err)
	}
	return l, nil
}

func (s *sqlStore) AppendLog(ctx context.Context, c LogChunk, limit int64) (Live, error) {
	if c.Operation == "" || c.Offset < 0 {
		return Live{}, fmt.Errorf("live log of session %q: operation %q, offset %d: want an operation and an offset not negative", c.Session, c.Operation, c.Offset)
	}
	if c.At.IsZero() {
		c.At = now()
	}
	var l Live
	err := s.write(ctx, func(tx *sql.Tx) error {
		var err error
		if l, err = s.liveSession(ctx, tx, c.Session); err != nil {
			return err
		}
		if err := s.txRow(ctx, tx, `SELECT COALESCE(SUM(length(data)), 0) FROM log_chunks WHERE session = $1`,
			c.Session).Scan(&l.LogBytes); err != nil {
			return err
		}
		data := c.Data[:min(int64(len(c.Data)), max(limit-l.LogBytes, 0))]
		if len(data) == 0 {
			return nil
		}
		res, err := s.txExec(ctx, tx, `INSERT INTO log_chunks (task_id, session, operation, pos, at, data)
			VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (session, operation, pos) DO NOTHING`,
			l.TaskID, c.Session, c.Operation, c.Offset, ts(c.At), data)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err == nil && n == 1 {
			l.Kept = len(data)
			l.LogBytes += int64(len(data))
		}
		return nil
	})
	if err != nil {
		return Live{}, fmt.Errorf("live log of session %q: %w", c.Session, err)
	}
	return l, nil
}

func (s *sqlStore) LiveLog(ctx context.Context, taskID int64, session string, after int64, limit int) ([]LogChunk, error) {
	if limit <= 0 {
		limit = 1000
	}
	q := `SELECT id, task_id, session, operation, pos, at, data FROM log_chunks
		WHERE task_id = $1 AND session = $2 AND id > $3 ORDER BY id LIMIT $4`
	args := []any{taskID, session, after, limit}
	if session == "" {
		q = `SELECT c.id, c.task_id, c.session, c.operation, c.pos, c.at, c.data FROM log_chunks c
			JOIN tasks t ON t.id = c.task_id AND t.session = c.session
			WHERE c.task_id = $1 AND c.id > $2 ORDER BY c.id LIMIT $3`
		args = []any{taskID, after, limit}
	}
	rows, err := s.read(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("live log of task %d: %w", taskID, err)
	}
	defer rows.Close()
	var cs []LogChunk
	for rows.Next() {
		var c LogChunk
		if err := rows.Scan(&c.ID, &c.TaskID, &c.Session, &c.Operation, &c.Offset, timeCol{&c.At}, &c.Data); err != nil {
			return nil, fmt.Errorf("live log of task %d: %w", taskID, err)
		}
		cs = append(cs, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("live log of task %d: %w", taskID, err)
	}
	return cs, nil
}

func (s *sqlStore) PruneLiveLogs(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.exec(ctx, `DELETE FROM log_chunks WHERE task_id IN (
		SELECT DISTINCT c.task_id FROM log_chunks c JOIN tasks t ON t.id = c.task_id
		WHERE t.state = 'done' AND t.finished < $1)`, ts(before))
	if err != nil {
		return 0, fmt.Errorf("prune live logs: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("prune live logs: %w", err)
	}
	return n, nil
}

func (s *sqlStore) Timeline(ctx context.Context, id int64) ([]Event, error) {
	t, err := s.Task(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("timeline: %w", err)
	}
	wrap := func(err error) error { return fmt.Errorf("timeline of task %d: %w", id, err) }
	var evs []Event
	rows, err := s.read(ctx, `SELECT id, task_id, session, at, kind, operation, status, detail
		FROM task_events WHERE task_id = $1 ORDER BY id`, id)
	if err != nil {
		return nil, wrap(err)
	}
	queued := false
	for rows.Next() {
		var e Event
		if err := rows.Scan(&e.ID, &e.TaskID, &e.Session, timeCol{&e.At}, &e.Kind, &e.Operation, &e.Status, &e.Detail); err != nil {
			rows.Close()
			return nil, wrap(err)
		}
		queued = queued || e.Kind == EventQueued
		evs = append(evs, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, wrap(err)
	}
	if !queued {
		evs = append(evs, Event{TaskID: id, At: t.Created, Kind: EventQueued})
	}
	rows, err = s.read(ctx, `SELECT id, agent, created FROM sessions WHERE task_id = $1 ORDER BY created`, id)
	if err != nil {
		return nil, wrap(err)
	}
	for rows.Next() {
		e := Event{TaskID: id, Kind: EventClaimed}
		if err := rows.Scan(&e.Session, &e.Detail, timeCol{&e.At}); err != nil {
			rows.Close()
			return nil, wrap(err)
		}
		evs = append(evs, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, wrap(err)
	}
	e := Event{TaskID: id, Kind: EventResult, Status: t.Status, Detail: t.Reason}
	err = s.readRow(ctx, `SELECT session, stored FROM results WHERE task_id = $1`, id).Scan(&e.Session, timeCol{&e.At})
	switch {
	case err == nil:
		evs = append(evs, e)
	case !errors.Is(err, sql.ErrNoRows):
		return nil, wrap(err)
	}
	slices.SortStableFunc(evs, func(a, b Event) int { return a.At.Compare(b.At) })
	return evs, nil
}

func (s *sqlStore) TaskCounts(ctx context.Context) ([]TaskCount, error) {
	rows, err := s.read(ctx, `SELECT state, status, count(*) FROM tasks GROUP BY state, status ORDER BY state, status`)
	if err != nil {
		return nil, fmt.Errorf("task counts: %w", err)
	}
	defer rows.Close()
	var cs []TaskCount
	for rows.Next() {
		var c TaskCount
		var state string
		if err := rows.Scan(&state, &c.Status, &c.N); err != nil {
			return nil, fmt.Errorf("task counts: %w", err)
		}
		c.State = TaskState(state)
		cs = append(cs, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("task counts: %w", err)
	}
	return cs, nil
}
