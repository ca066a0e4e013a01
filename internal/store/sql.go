package store

import (
	"cmp"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// sqlStore is Store on database/sql, for both databases: the SQL is the
// same but for what dialect holds. Every statement takes its values as
// parameters ($1, $2, ...; modernc.org/sqlite reads them too).
type sqlStore struct {
	name string  // the database, for messages (a PostgreSQL URL without its password)
	w    *sql.DB // writes (SQLite: one connection)
	r    *sql.DB // reads (PostgreSQL: w)
	d    dialect
	log  *slog.Logger
	// rs and ws cache the pools' prepared statements (nil: no caching).
	rs, ws *stmtCache
}

// dialect is what differs between the databases.
type dialect struct {
	name string // sqlite or postgres
	// lock and unlock hold the migration lock across controllers ("" for
	// none); migrationsTable creates schema_migrations if it is missing.
	lock, unlock, migrationsTable string
	// forUpdate locks the rows a SELECT in a write transaction reads;
	// skipLocked also passes over rows that another holds.
	forUpdate, skipLocked string
	// claim gives the best matching queued task to an agent and returns
	// its taskColumns. $1 the agent's machines by configuration (a JSON
	// object), $2 its toolchain, $3 its name, $4 the session, $5 now, $6
	// the end of the lease or NULL, $7 the lease margin in microseconds
	// (with $6 NULL, the lease ends at $5 + the task's timeout + $7);
	// with claimSession, also $8 the fingerprint and $9 the challenge,
	// and it inserts the session itself, expiring with the task's lease.
	claim        string
	claimSession bool
	// completeStored, if not "", stores a result (not an interrupt) in
	// one statement when its session is active and its task still in
	// hand and not being cancelled, and returns the task's id; otherwise it returns no row and
	// changes nothing. $1 the session, $2 the status, $3 now, $4 the
	// encoding, $5 the size and $6 the data of the result.
	completeStored string
	// analyze updates the planner's statistics of tasks ("" for none).
	analyze string
}

// taskColumns are a task's columns in the order scanTask reads them.
const taskColumns = `id, submission_id, name, version, config, machine_pattern, target,
	toolchain, priority, manifest, timeout_ns, state, attempts, created, claimed, finished,
	agent, machine, session, lease_expires, status, reason, cancel`

const submissionColumns = `id, created, name, version, archive, repository, revision,
	configs, toolchain, priority, submitter`

// Session states.
const (
	sessionActive  = "active"
	sessionDone    = "done"
	sessionExpired = "expired"
)

// The result status that requeues a task, and the one a task ends with
// when it was given up.
const (
	statusInterrupt = "interrupt"
	statusAbnormal  = "abnormal"
	statusAbort     = "abort"
)

func (s *sqlStore) Close() error {
	s.rs.close()
	s.ws.close()
	err := s.w.Close()
	if s.r != s.w {
		err = errors.Join(err, s.r.Close())
	}
	return err
}

// write runs f in a write transaction (on SQLite, BEGIN IMMEDIATE on the
// one writer connection), and commits when f succeeds.
func (s *sqlStore) write(ctx context.Context, f func(*sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := f(tx); err != nil {
		tx.Rollback()
		s.ws.prepareMissed(ctx)
		return err
	}
	err = tx.Commit()
	s.ws.prepareMissed(ctx)
	return err
}

func (s *sqlStore) Submit(ctx context.Context, sub *Submission, tasks []*Task) error {
	if sub.Name == "" || sub.Version == "" {
		return fmt.Errorf("submit: the submission's name and version must be given (have %q, %q)", sub.Name, sub.Version)
	}
	if sub.Created.IsZero() {
		sub.Created = now()
	}
	configs, err := json.Marshal(nonNil(sub.Configs))
	if err != nil {
		return fmt.Errorf("submit %s %s: configs: %w", sub.Name, sub.Version, err)
	}
	for i, t := range tasks {
		if t.Config == "" {
			return fmt.Errorf("submit %s %s: task %d has no configuration", sub.Name, sub.Version, i)
		}
	}
	err = s.write(ctx, func(tx *sql.Tx) error {
		err := s.txRow(ctx, tx, `INSERT INTO submissions
			(created, name, version, archive, repository, revision, configs, toolchain, priority, submitter)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id`,
			ts(sub.Created), sub.Name, sub.Version, sub.Archive, sub.Repository, sub.Revision,
			string(configs), sub.Toolchain, sub.Priority, sub.Submitter).Scan(&sub.ID)
		if err != nil {
			return err
		}
		for _, t := range tasks {
			t.SubmissionID = sub.ID
			t.Name = cmp.Or(t.Name, sub.Name)
			t.Version = cmp.Or(t.Version, sub.Version)
			t.Toolchain = cmp.Or(t.Toolchain, sub.Toolchain)
			if t.Priority == 0 {
				t.Priority = sub.Priority
			}
			if t.Created.IsZero() {
				t.Created = sub.Created
			}
			t.State = Queued
			err := s.txRow(ctx, tx, `INSERT INTO tasks
				(submission_id, name, version, config, machine_pattern, target, toolchain, priority,
				 manifest, timeout_ns, state, created)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id`,
				t.SubmissionID, t.Name, t.Version, t.Config, t.MachinePattern, t.Target, t.Toolchain,
				t.Priority, t.Manifest, int64(t.Timeout), string(t.State), ts(t.Created)).Scan(&t.ID)
			if err != nil {
				return fmt.Errorf("task %s: %w", t.Config, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("submit %s %s: %w", sub.Name, sub.Version, err)
	}
	if s.d.analyze != "" && len(tasks) >= bulk {
		// After a bulk load, as the planner's statistics would
		// otherwise wait for autovacuum.
		if _, err := s.exec(ctx, s.d.analyze); err != nil {
			s.log.Warn("store: analyze after a bulk submission", "store", s.name, "err", err)
		}
	}
	return nil
}

// bulk is the number of tasks in a submission after which the store
// updates the planner's statistics (dialect.analyze).
const bulk = 100

func (s *sqlStore) Claim(ctx context.Context, c Claim) (*Task, error) {
	if len(c.Machines) == 0 {
		return nil, ErrNoTask
	}
	if c.Session == "" || c.Agent == "" {
		return nil, fmt.Errorf("claim: the agent and the session must be given (have %q, %q)", c.Agent, c.Session)
	}
	if c.Now.IsZero() {
		c.Now = now()
	}
	machines, err := json.Marshal(c.Machines)
	if err != nil {
		return nil, fmt.Errorf("claim for %s: %w", c.Agent, err)
	}
	// The lease ($6 and $7): LeaseUntil, or else (NULL) the task's
	// timeout plus LeaseMargin in microseconds, computed in the claim.
	args := []any{string(machines), c.Toolchain, c.Agent, c.Session, ts(c.Now), ts(c.LeaseUntil), c.LeaseMargin.Microseconds()}
	var t *Task
	if s.d.claimSession {
		// One statement claims the task and starts the session.
		t, err = scanTask(s.writeRow(ctx, s.d.claim, append(args, c.Fingerprint, c.Challenge)...))
	} else {
		err = s.write(ctx, func(tx *sql.Tx) error {
			var err error
			if t, err = scanTask(s.txRow(ctx, tx, s.d.claim, args...)); err != nil {
				return err
			}
			_, err = s.txExec(ctx, tx, `INSERT INTO sessions
				(id, task_id, agent, fingerprint, challenge, created, expires, state)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
				c.Session, t.ID, c.Agent, c.Fingerprint, c.Challenge, ts(c.Now), ts(t.LeaseExpires), sessionActive)
			return err
		})
	}
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNoTask
	}
	if err != nil {
		return nil, fmt.Errorf("claim for %s: %w", c.Agent, err)
	}
	return t, nil
}

func (s *sqlStore) Session(ctx context.Context, id string) (*Session, error) {
	var ss Session
	err := s.readRow(ctx, `SELECT s.id, s.task_id, s.agent, s.fingerprint, s.challenge, s.created, s.expires, s.state,
			t.name, t.version, t.config, t.machine
		FROM sessions s JOIN tasks t ON t.id = s.task_id WHERE s.id = $1`, id).Scan(
		&ss.ID, &ss.TaskID, &ss.Agent, &ss.Fingerprint, &ss.Challenge, timeCol{&ss.Created}, timeCol{&ss.Expires}, &ss.State,
		&ss.Name, &ss.Version, &ss.Config, &ss.Machine)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("session %q: %w", id, ErrUnknownSession)
	}
	if err != nil {
		return nil, fmt.Errorf("session %q: %w", id, err)
	}
	return &ss, nil
}

func (s *sqlStore) Complete(ctx context.Context, r Result, maxAttempts int) (Outcome, error) {
	if r.Status == "" {
		return 0, fmt.Errorf("complete session %q: the result has no status", r.Session)
	}
	if r.Now.IsZero() {
		r.Now = now()
	}
	// Compressing takes the longest: do it before the transaction.
	encoding, data, err := compress(r.Manifest)
	if err != nil {
		return 0, fmt.Errorf("complete session %q: %w", r.Session, err)
	}
	if s.d.completeStored != "" && r.Status != statusInterrupt {
		// The usual case in one statement; no row when the session is not
		// one whose result is due, and the transaction below says why.
		var taskID int64
		err := s.writeRow(ctx, s.d.completeStored, r.Session, r.Status, ts(r.Now), encoding, int64(len(r.Manifest)), data).Scan(&taskID)
		if err == nil {
			return Stored, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return 0, fmt.Errorf("complete session %q: %w", r.Session, err)
		}
	}
	var out Outcome
	err = s.write(ctx, func(tx *sql.Tx) error {
		var (
			taskID          int64
			state, session  string
			attempts        int
			leaseExpires    time.Time
			sessionState    string
			cancel          string
			taskStillInHand bool
		)
		// One statement locks the task, then the session (the order
		// Expire takes them in).
		err := s.txRow(ctx, tx, `SELECT t.id, t.state, t.attempts, t.session, t.lease_expires, s.state, t.cancel
			FROM tasks t JOIN sessions s ON s.task_id = t.id WHERE s.id = $1`+s.d.forUpdate,
			r.Session).Scan(&taskID, &state, &attempts, &session, timeCol{&leaseExpires}, &sessionState, &cancel)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrUnknownSession
		}
		if err != nil {
			return err
		}
		if sessionState == sessionDone {
			out = Duplicate
			return nil
		}
		taskStillInHand = state == string(Running) && session == r.Session && !leaseExpires.Before(r.Now)
		if sessionState != sessionActive || !taskStillInHand {
			return ErrSessionExpired
		}
		if r.Status == statusInterrupt && cancel == "" && (maxAttempts <= 0 || attempts < maxAttempts) {
			out = Requeued
			if _, err := s.txExec(ctx, tx, `UPDATE tasks SET state = $1 WHERE id = $2`, string(Queued), taskID); err != nil {
				return err
			}
			if err := s.txEvent(ctx, tx, Event{TaskID: taskID, Session: r.Session, At: r.Now, Kind: EventRequeued,
				Detail: "interrupted"}); err != nil {
				return err
			}
			_, err := s.txExec(ctx, tx, `UPDATE sessions SET state = $1 WHERE id = $2`, sessionExpired, r.Session)
			return err
		}
		status, reason := r.Status, ""
		out = Stored
		switch {
		case cancel != "":
			// Cancelled while it ran: it ends so, whatever the agent
			// made of the stop.
			reason = cancel
			if status == statusInterrupt {
				status = statusAbort
			}
		case r.Status == statusInterrupt:
			status, reason = statusAbnormal, fmt.Sprintf("interrupted after %d sessions", attempts)
			out = Abandoned
		}
		if _, err := s.txExec(ctx, tx, `INSERT INTO results (task_id, session, stored, encoding, size, data)
			VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (task_id) DO UPDATE SET session = excluded.session, stored = excluded.stored,
				encoding = excluded.encoding, size = excluded.size, data = excluded.data`,
			taskID, r.Session, ts(r.Now), encoding, int64(len(r.Manifest)), data); err != nil {
			return err
		}
		if _, err := s.txExec(ctx, tx, `UPDATE tasks SET state = $1, status = $2, reason = $3, finished = $4 WHERE id = $5`,
			string(Done), status, reason, ts(r.Now), taskID); err != nil {
			return err
		}
		_, err = s.txExec(ctx, tx, `UPDATE sessions SET state = $1 WHERE id = $2`, sessionDone, r.Session)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("complete session %q: %w", r.Session, err)
	}
	return out, nil
}

func (s *sqlStore) Expire(ctx context.Context, at time.Time, maxAttempts int) ([]*Task, error) {
	var changed []*Task
	err := s.write(ctx, func(tx *sql.Tx) error {
		type lapsed struct {
			id       int64
			attempts int
			session  string
			cancel   string
		}
		var ls []lapsed
		rows, err := s.txRows(ctx, tx, `SELECT id, attempts, session, cancel FROM tasks
			WHERE state = 'running' AND lease_expires < $1 ORDER BY id`+s.d.skipLocked, ts(at))
		if err != nil {
			return err
		}
		for rows.Next() {
			var l lapsed
			if err := rows.Scan(&l.id, &l.attempts, &l.session, &l.cancel); err != nil {
				rows.Close()
				return err
			}
			ls = append(ls, l)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, l := range ls {
			var row *sql.Row
			ev := Event{TaskID: l.id, Session: l.session, At: at, Kind: EventRequeued, Detail: "lease expired"}
			switch {
			case l.cancel != "":
				ev.Kind, ev.Status, ev.Detail = EventEnded, statusAbort, "lease expired after the cancel"
				row = s.txRow(ctx, tx, `UPDATE tasks SET state = $1, status = $2, reason = $3, finished = $4
					WHERE id = $5 RETURNING `+taskColumns,
					string(Done), statusAbort, l.cancel+" (the lease expired without a result)", ts(at), l.id)
			case maxAttempts > 0 && l.attempts >= maxAttempts:
				ev.Kind, ev.Status, ev.Detail = EventEnded, statusAbnormal, fmt.Sprintf("lease expired after %d sessions", l.attempts)
				row = s.txRow(ctx, tx, `UPDATE tasks SET state = $1, status = $2, reason = $3, finished = $4
					WHERE id = $5 RETURNING `+taskColumns,
					string(Done), statusAbnormal, ev.Detail, ts(at), l.id)
			default:
				row = s.txRow(ctx, tx, `UPDATE tasks SET state = $1 WHERE id = $2 RETURNING `+taskColumns,
					string(Queued), l.id)
			}
			t, err := scanTask(row)
			if err != nil {
				return fmt.Errorf("task %d: %w", l.id, err)
			}
			if err := s.txEvent(ctx, tx, ev); err != nil {
				return fmt.Errorf("task %d: %w", l.id, err)
			}
			if _, err := s.txExec(ctx, tx, `UPDATE sessions SET state = $1 WHERE id = $2 AND state = $3`,
				sessionExpired, l.session, sessionActive); err != nil {
				return fmt.Errorf("session %q: %w", l.session, err)
			}
			changed = append(changed, t)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("expire leases before %s: %w", at.UTC().Format(time.RFC3339), err)
	}
	return changed, nil
}

func (s *sqlStore) Submission(ctx context.Context, id int64) (*Submission, []*Task, error) {
	rows, err := s.read(ctx, `SELECT `+submissionColumns+` FROM submissions WHERE id = $1`, id)
	if err != nil {
		return nil, nil, fmt.Errorf("submission %d: %w", id, err)
	}
	subs, err := scanSubmissions(rows)
	if err != nil {
		return nil, nil, fmt.Errorf("submission %d: %w", id, err)
	}
	if len(subs) == 0 {
		return nil, nil, fmt.Errorf("submission %d: %w", id, ErrNotFound)
	}
	rows, err = s.read(ctx, `SELECT `+taskColumns+` FROM tasks WHERE submission_id = $1 ORDER BY id`, id)
	if err != nil {
		return nil, nil, fmt.Errorf("submission %d: tasks: %w", id, err)
	}
	tasks, err := scanTasks(rows)
	if err != nil {
		return nil, nil, fmt.Errorf("submission %d: tasks: %w", id, err)
	}
	return subs[0], tasks, nil
}

func (s *sqlStore) Submissions(ctx context.Context, limit, offset int) ([]*Submission, error) {
	limit, err := page(limit, offset)
	if err != nil {
		return nil, fmt.Errorf("submissions: %w", err)
	}
	rows, err := s.read(ctx, `SELECT `+submissionColumns+` FROM submissions ORDER BY id DESC LIMIT $1 OFFSET $2`,
		limit, offset)
	if err != nil {
		return nil, fmt.Errorf("submissions: %w", err)
	}
	subs, err := scanSubmissions(rows)
	if err != nil {
		return nil, fmt.Errorf("submissions: %w", err)
	}
	return subs, nil
}

func (s *sqlStore) Task(ctx context.Context, id int64) (*Task, error) {
	t, err := scanTask(s.readRow(ctx, `SELECT `+taskColumns+` FROM tasks WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("task %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("task %d: %w", id, err)
	}
	return t, nil
}

func (s *sqlStore) Tasks(ctx context.Context, f TaskFilter) ([]*Task, error) {
	limit, err := page(f.Limit, f.Offset)
	if err != nil {
		return nil, fmt.Errorf("tasks: %w", err)
	}
	// The conditions are constants; the values go as parameters.
	var where []string
	var args []any
	add := func(column string, v any) {
		args = append(args, v)
		where = append(where, column+" = $"+strconv.Itoa(len(args)))
	}
	if f.SubmissionID != 0 {
		add("submission_id", f.SubmissionID)
	}
	for _, c := range []struct{ column, v string }{
		{"name", f.Name}, {"version", f.Version}, {"config", f.Config}, {"machine", f.Machine},
		{"agent", f.Agent}, {"state", string(f.State)}, {"status", f.Status},
	} {
		if c.v != "" {
			add(c.column, c.v)
		}
	}
	q := `SELECT ` + taskColumns + ` FROM tasks`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	args = append(args, limit, f.Offset)
	q += fmt.Sprintf(` ORDER BY id DESC LIMIT $%d OFFSET $%d`, len(args)-1, len(args))
	rows, err := s.read(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("tasks: %w", err)
	}
	tasks, err := scanTasks(rows)
	if err != nil {
		return nil, fmt.Errorf("tasks: %w", err)
	}
	return tasks, nil
}

func (s *sqlStore) Result(ctx context.Context, taskID int64) ([]byte, error) {
	var (
		encoding string
		size     int64
		data     []byte
	)
	err := s.readRow(ctx, `SELECT encoding, size, data FROM results WHERE task_id = $1`, taskID).Scan(&encoding, &size, &data)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("result of task %d: %w", taskID, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("result of task %d: %w", taskID, err)
	}
	m, err := decompress(encoding, data, size)
	if err != nil {
		return nil, fmt.Errorf("result of task %d: %w", taskID, err)
	}
	return m, nil
}

func (s *sqlStore) Queue(ctx context.Context) (Queue, error) {
	var q Queue
	if err := s.readRow(ctx, `SELECT count(*) FROM tasks WHERE state = 'queued'`).Scan(&q.Depth); err != nil {
		return Queue{}, fmt.Errorf("queue: %w", err)
	}
	if q.Depth == 0 {
		return q, nil
	}
	t, err := scanTask(s.readRow(ctx, `SELECT `+taskColumns+` FROM tasks WHERE state = 'queued' ORDER BY id LIMIT 1`))
	switch {
	case errors.Is(err, sql.ErrNoRows): // claimed since
	case err != nil:
		return Queue{}, fmt.Errorf("queue: oldest task: %w", err)
	default:
		q.Oldest = t
	}
	return q, nil
}

func (s *sqlStore) SeeAgent(ctx context.Context, a Agent) error {
	if a.Name == "" {
		return errors.New("see agent: the agent has no name")
	}
	if a.LastSeen.IsZero() {
		a.LastSeen = now()
	}
	machines, err := json.Marshal(nonNil(a.Machines))
	if err != nil {
		return fmt.Errorf("see agent %s: %w", a.Name, err)
	}
	_, err = s.exec(ctx, `INSERT INTO agents (name, toolchain, version, fingerprint, machines, last_seen, address)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (name) DO UPDATE SET toolchain = excluded.toolchain, version = excluded.version,
			fingerprint = excluded.fingerprint, machines = excluded.machines,
			last_seen = excluded.last_seen, address = excluded.address`,
		a.Name, a.Toolchain, a.Version, a.Fingerprint, string(machines), ts(a.LastSeen), a.Address)
	if err != nil {
		return fmt.Errorf("see agent %s: %w", a.Name, err)
	}
	return nil
}

func (s *sqlStore) Agents(ctx context.Context) ([]Agent, error) {
	rows, err := s.read(ctx, `SELECT name, toolchain, version, fingerprint, machines, last_seen, address
		FROM agents ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("agents: %w", err)
	}
	defer rows.Close()
	var as []Agent
	for rows.Next() {
		var a Agent
		var machines string
		if err := rows.Scan(&a.Name, &a.Toolchain, &a.Version, &a.Fingerprint, &machines, timeCol{&a.LastSeen}, &a.Address); err != nil {
			return nil, fmt.Errorf("agents: %w", err)
		}
		if err := json.Unmarshal([]byte(machines), &a.Machines); err != nil {
			return nil, fmt.Errorf("agents: %s: machines: %w", a.Name, err)
		}
		as = append(as, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("agents: %w", err)
	}
	return as, nil
}

func (s *sqlStore) AddKey(ctx context.Context, k Key) error {
	if k.Fingerprint == "" || len(k.PEM) == 0 {
		return errors.New("add key: a key needs its fingerprint and its PEM text")
	}
	if k.Added.IsZero() {
		k.Added = now()
	}
	_, err := s.exec(ctx, `INSERT INTO agent_keys (fingerprint, pem, name, added) VALUES ($1, $2, $3, $4)
		ON CONFLICT (fingerprint) DO UPDATE SET pem = excluded.pem, name = excluded.name, added = excluded.added`,
		k.Fingerprint, k.PEM, k.Name, ts(k.Added))
	if err != nil {
		return fmt.Errorf("add key %s: %w", k.Fingerprint, err)
	}
	return nil
}

func (s *sqlStore) Keys(ctx context.Context) ([]Key, error) {
	rows, err := s.read(ctx, `SELECT fingerprint, pem, name, added FROM agent_keys ORDER BY name, fingerprint`)
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	defer rows.Close()
	var ks []Key
	for rows.Next() {
		var k Key
		if err := rows.Scan(&k.Fingerprint, &k.PEM, &k.Name, timeCol{&k.Added}); err != nil {
			return nil, fmt.Errorf("keys: %w", err)
		}
		ks = append(ks, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	return ks, nil
}

func (s *sqlStore) Key(ctx context.Context, fingerprint string) (*Key, error) {
	var k Key
	err := s.readRow(ctx, `SELECT fingerprint, pem, name, added FROM agent_keys WHERE fingerprint = $1`,
		fingerprint).Scan(&k.Fingerprint, &k.PEM, &k.Name, timeCol{&k.Added})
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("key %s: %w", fingerprint, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", fingerprint, err)
	}
	return &k, nil
}

func (s *sqlStore) RemoveKey(ctx context.Context, fingerprint string) error {
	res, err := s.exec(ctx, `DELETE FROM agent_keys WHERE fingerprint = $1`, fingerprint)
	if err != nil {
		return fmt.Errorf("remove key %s: %w", fingerprint, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("remove key %s: %w", fingerprint, err)
	} else if n == 0 {
		return fmt.Errorf("remove key %s: %w", fingerprint, ErrNotFound)
	}
	return nil
}

func (s *sqlStore) PutArchive(ctx context.Context, sum string, data []byte) error {
	if err := checkSHA256(sum); err != nil {
		return fmt.Errorf("put archive: %w", err)
	}
	if got := sha256.Sum256(data); hex.EncodeToString(got[:]) != sum {
		return fmt.Errorf("put archive %s: the data's SHA-256 is %x", sum, got)
	}
	_, err := s.exec(ctx, `INSERT INTO archives (sha256, size, added, data) VALUES ($1, $2, $3, $4)
		ON CONFLICT (sha256) DO NOTHING`, sum, int64(len(data)), ts(now()), data)
	if err != nil {
		return fmt.Errorf("put archive %s: %w", sum, err)
	}
	return nil
}

func (s *sqlStore) Archive(ctx context.Context, sum string) ([]byte, error) {
	var data []byte
	err := s.readRow(ctx, `SELECT data FROM archives WHERE sha256 = $1`, sum).Scan(&data)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("archive %s: %w", sum, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w", sum, err)
	}
	return data, nil
}

// checkSHA256 checks that sum is a SHA-256 in lower-case hex.
func checkSHA256(sum string) error {
	if len(sum) != 2*sha256.Size || strings.Trim(sum, "0123456789abcdef") != "" {
		return fmt.Errorf("archive name %q: want a SHA-256 as 64 lower-case hex digits", sum)
	}
	return nil
}

// page checks a listing's limit and offset, and returns the limit with 0
// made the default.
func page(limit, offset int) (int, error) {
	if limit < 0 || offset < 0 {
		return 0, fmt.Errorf("limit %d, offset %d: want neither negative", limit, offset)
	}
	if limit == 0 {
		limit = 100
	}
	return limit, nil
}

// scanner is a *sql.Row or *sql.Rows.
type scanner interface{ Scan(...any) error }

func scanTask(row scanner) (*Task, error) {
	var t Task
	var state string
	var timeout int64
	err := row.Scan(&t.ID, &t.SubmissionID, &t.Name, &t.Version, &t.Config, &t.MachinePattern, &t.Target,
		&t.Toolchain, &t.Priority, &t.Manifest, &timeout, &state, &t.Attempts,
		timeCol{&t.Created}, timeCol{&t.Claimed}, timeCol{&t.Finished},
		&t.Agent, &t.Machine, &t.Session, timeCol{&t.LeaseExpires}, &t.Status, &t.Reason, &t.Cancel)
	if err != nil {
		return nil, err
	}
	t.State, t.Timeout = TaskState(state), time.Duration(timeout)
	return &t, nil
}

func scanTasks(rows *sql.Rows) ([]*Task, error) {
	defer rows.Close()
	var ts []*Task
	for rows.Next() {
		t, err := scanTask(rows)
		if err != nil {
			return nil, err
		}
		ts = append(ts, t)
	}
	return ts, rows.Err()
}

func scanSubmissions(rows *sql.Rows) ([]*Submission, error) {
	defer rows.Close()
	var subs []*Submission
	for rows.Next() {
		var s Submission
		var configs string
		err := rows.Scan(&s.ID, timeCol{&s.Created}, &s.Name, &s.Version, &s.Archive, &s.Repository, &s.Revision,
			&configs, &s.Toolchain, &s.Priority, &s.Submitter)
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(configs), &s.Configs); err != nil {
			return nil, fmt.Errorf("submission %d: configs: %w", s.ID, err)
		}
		subs = append(subs, &s)
	}
	return subs, rows.Err()
}

// now is the time as the store keeps it: UTC, to the microsecond.
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

// ts is t as a statement's parameter: UTC to the microsecond (the
// databases' precision), or NULL for the zero time. SQLite gets it as
// microseconds since the epoch (the driver's _time_integer_format).
func ts(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC().Truncate(time.Microsecond)
}

// timeCol scans a time column (microseconds since the epoch from SQLite,
// a timestamptz from PostgreSQL, or NULL for the zero time) into a UTC
// time.Time.
type timeCol struct{ t *time.Time }

func (c timeCol) Scan(v any) error {
	switch v := v.(type) {
	case nil:
		*c.t = time.Time{}
	case int64:
		*c.t = time.UnixMicro(v).UTC()
	case time.Time:
		*c.t = v.UTC()
	default:
		return fmt.Errorf("time column: unexpected %T", v)
	}
	return nil
}

// nonNil returns s, or an empty slice for nil (JSON [] rather than null).
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
