// Package store keeps the controller's state: submissions, the tasks they
// became, the sessions in which agents build them, results, agents seen,
// agent keys and source archives. Store is one interface with two
// implementations: SQLite (modernc.org/sqlite, pure Go, WAL), the embedded
// default, and PostgreSQL (jackc/pgx), which any number of controllers
// share, claiming tasks with SELECT ... FOR UPDATE SKIP LOCKED. No
// controller keeps state that another cannot see in the store.
//
// The schema is migrated at Open, from numbered migrations per database.
// Results (their logs) are stored compressed.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Errors for decisions with errors.Is.
var (
	// ErrNoTask means no queued task matches the claim.
	ErrNoTask = errors.New("no task")
	// ErrNotFound means the submission, task, key or archive does not exist.
	ErrNotFound = errors.New("not found")
	// ErrUnknownSession means no task was ever given in that session.
	ErrUnknownSession = errors.New("unknown session")
	// ErrSessionExpired means the session's lease ran out (or its task was
	// given to another agent) before its result arrived.
	ErrSessionExpired = errors.New("session expired")
	// ErrFinished means the task has ended: it cannot be cancelled.
	ErrFinished = errors.New("task has finished")
	// ErrNotFinished means the task has not ended: it cannot be rebuilt.
	ErrNotFinished = errors.New("task has not finished")
)

// TaskState is where a task is in its life.
type TaskState string

const (
	Queued  TaskState = "queued"  // waiting for an agent
	Running TaskState = "running" // given to an agent in a session
	Done    TaskState = "done"    // ended: Status says how
)

// Submission is one piece of work submitted to the controller: a package
// version with its sources and steps, for some build configurations.
type Submission struct {
	ID      int64
	Created time.Time
	// Name and Version of the package.
	Name, Version string
	// Archive is the SHA-256 (hex) of the sources archive, "" if none.
	Archive string
	// Repository and Revision, when the sources came from git.
	Repository, Revision string
	// Configs are the configuration names or classes as submitted.
	Configs []string
	// Toolchain is the toolchain name agents must have ("" any).
	Toolchain string
	Priority  int // higher first
	// Submitter says who submitted it (free text, for the dashboard).
	Submitter string
}

// Task is one build of a submission in one build configuration.
type Task struct {
	ID           int64
	SubmissionID int64
	Name         string // the package's name and version (from the submission)
	Version      string
	// Config is the build configuration's name; MachinePattern the
	// machine name pattern it runs on (path.Match syntax); Target its
	// target triplet.
	Config, MachinePattern, Target string
	Toolchain                      string // "" any
	Priority                       int
	// Manifest is the task manifest text as it goes to the agent, except
	// for the machine field, which the claim fills.
	Manifest string
	// Timeout is the build timeout: a session's lease lasts this plus
	// the controller's margin.
	Timeout time.Duration

	State    TaskState
	Attempts int // sessions started so far
	Created  time.Time
	Claimed  time.Time // zero unless claimed; the last claim
	Finished time.Time // zero unless done

	// The last (or current) session: the agent, the machine the task
	// was given for, the session id and its lease.
	Agent, Machine, Session string
	LeaseExpires            time.Time

	// Status is the result's status when done: success, warning, error,
	// abort, abnormal, skip or interrupt (build2's names).
	Status string
	// Reason says why a task ended without a result from an agent (for
	// example "lease expired 3 times"), or that it was cancelled.
	Reason string
	// Cancel, while the task runs, is why it is being cancelled (see
	// Store.Cancel); "" otherwise.
	Cancel string
}

// Session is one giving of a task to an agent.
type Session struct {
	ID          string
	TaskID      int64
	Agent       string
	Fingerprint string // the agent's key fingerprint when it was challenged
	Challenge   string // base64, "" when no challenge was sent
	Created     time.Time
	Expires     time.Time
	// State is "active", "done" (its result was stored) or "expired"
	// (its lease ran out, or its result requeued the task).
	State string
	// Name, Version and Config are the task's, so that a result can be
	// checked against its task without reading the task; Machine is the
	// machine it was last given for.
	Name, Version, Config, Machine string
}

// Claim asks for the best queued task for an agent: the highest priority,
// then the oldest, among the tasks whose configuration the agent has a
// machine for and whose toolchain is the agent's (or any).
type Claim struct {
	Agent       string
	Fingerprint string
	Toolchain   string
	// Machines maps each configuration name the agent can build to the
	// name of its machine that matches the configuration's pattern. The
	// claimed task's Machine is set from it.
	Machines map[string]string
	// Session and Challenge are the new session's id and challenge (""
	// for none); Now its start.
	Session, Challenge string
	Now                time.Time
	// LeaseUntil, when not zero, is the end of the session's lease.
	// Zero leases the claimed task for its own Timeout plus
	// LeaseMargin: until Now + Task.Timeout + LeaseMargin.
	LeaseUntil  time.Time
	LeaseMargin time.Duration
}

// Result is a task's result as an agent reported it.
type Result struct {
	Session string
	Status  string // build2's status name
	// Manifest is the result manifest's text, with its logs.
	Manifest []byte
	Now      time.Time
}

// Outcome says what Complete did.
type Outcome int

const (
	Stored    Outcome = iota // the result was stored; the task is done
	Duplicate                // the session's result was stored before; nothing changed
	Requeued                 // an interrupt result: the task is queued again
	Abandoned                // an interrupt result past the attempts limit: the task ended abnormal
)

// String names the outcome in lower case (stored, duplicate, requeued,
// abandoned).
func (o Outcome) String() string {
	switch o {
	case Stored:
		return "stored"
	case Duplicate:
		return "duplicate"
	case Requeued:
		return "requeued"
	case Abandoned:
		return "abandoned"
	}
	return fmt.Sprintf("outcome(%d)", int(o))
}

// Agent is an agent as the controller last saw it.
type Agent struct {
	Name        string
	Toolchain   string // name and version, as the agent gave them
	Version     string
	Fingerprint string
	Machines    []Machine
	LastSeen    time.Time
	Address     string // the address its last request came from
}

// Machine is one machine an agent offers.
type Machine struct {
	ID, Name, Summary string
}

// Key is a registered agent public key.
type Key struct {
	Fingerprint string
	PEM         []byte // PKIX "PUBLIC KEY"
	Name        string // whose it is
	Added       time.Time
}

// TaskFilter selects tasks; zero fields select all. Tasks come newest
// first.
type TaskFilter struct {
	SubmissionID  int64
	Name, Version string
	Config        string
	Machine       string
	Agent         string
	State         TaskState
	Status        string
	Limit, Offset int // Limit 0 means 100
}

// Queue is the queue's depth and its oldest waiting task.
type Queue struct {
	Depth  int
	Oldest *Task // nil when empty
}

// TaskCount is how many tasks are in a state with a status (Status is
// "" unless the state is Done).
type TaskCount struct {
	State  TaskState
	Status string
	N      int
}

// Store is the controller's state. Every method is safe for concurrent use
// by any number of controllers sharing the database.
type Store interface {
	// Submit stores a submission and its tasks in one transaction, and
	// sets their IDs. It sets a zero Created to now, and fills each task's
	// empty Name, Version and Toolchain and zero Priority and Created from
	// the submission; the tasks are Queued.
	Submit(ctx context.Context, s *Submission, tasks []*Task) error
	// Claim gives the best matching queued task to an agent in a new
	// session (see Claim), or returns ErrNoTask. Two claims never get the
	// same task.
	Claim(ctx context.Context, c Claim) (*Task, error)
	// Session returns a session by id, or ErrUnknownSession.
	Session(ctx context.Context, id string) (*Session, error)
	// Complete stores a session's result. A second result for a session
	// whose result was stored is a Duplicate, not an error. A session
	// that is unknown is ErrUnknownSession; one that expired is
	// ErrSessionExpired, and nothing is stored. An interrupt result
	// requeues the task (Requeued), unless it has had maxAttempts
	// sessions (Abandoned: it ends abnormal, its result kept); maxAttempts
	// 0 means no limit. The manifest is stored compressed.
	Complete(ctx context.Context, r Result, maxAttempts int) (Outcome, error)
	// Expire ends the sessions whose lease ran out before now: their
	// tasks are queued again, or end abnormal with a reason once they
	// have had maxAttempts sessions (0: no limit). It returns the tasks
	// it changed, as they are now.
	Expire(ctx context.Context, now time.Time, maxAttempts int) ([]*Task, error)

	// Submission returns a submission and its tasks (in the order
	// submitted), or ErrNotFound.
	Submission(ctx context.Context, id int64) (*Submission, []*Task, error)
	// Submissions lists submissions, newest first (limit 0 means 100).
	Submissions(ctx context.Context, limit, offset int) ([]*Submission, error)
	// Task returns a task, or ErrNotFound.
	Task(ctx context.Context, id int64) (*Task, error)
	// Tasks lists the tasks that f selects, newest first.
	Tasks(ctx context.Context, f TaskFilter) ([]*Task, error)
	// Result returns a done task's result manifest text, or ErrNotFound.
	Result(ctx context.Context, taskID int64) ([]byte, error)
	// Queue reports the queue's depth and its oldest task.
	Queue(ctx context.Context) (Queue, error)
	// TaskCounts counts the tasks by state and status.
	TaskCounts(ctx context.Context) ([]TaskCount, error)

	// SeeAgent records an agent's request (insert or update by name).
	SeeAgent(ctx context.Context, a Agent) error
	// Agents lists the agents seen, by name.
	Agents(ctx context.Context) ([]Agent, error)

	// AddKey registers an agent key (replacing one of the same
	// fingerprint); Keys lists them; Key finds one or returns
	// ErrNotFound; RemoveKey deletes one or returns ErrNotFound.
	AddKey(ctx context.Context, k Key) error
	Keys(ctx context.Context) ([]Key, error)
	Key(ctx context.Context, fingerprint string) (*Key, error)
	RemoveKey(ctx context.Context, fingerprint string) error

	// PutArchive stores a sources archive under its SHA-256 (lower-case
	// hex), which the caller has computed and PutArchive checks; storing
	// it again is not an error.
	// Archive returns it, or ErrNotFound.
	PutArchive(ctx context.Context, sha256 string, data []byte) error
	Archive(ctx context.Context, sha256 string) ([]byte, error)

	// Cancel cancels a task: a queued one ends at once, with status
	// abort and reason as its reason; a running one keeps running with
	// Task.Cancel set to reason (its agent learns of it from Live) until
	// its result or the end of its lease, and then ends with that reason,
	// never queued again. Cancelling a task being cancelled changes
	// nothing. A done task is ErrFinished. It returns the task as it is
	// now.
	Cancel(ctx context.Context, taskID int64, reason string, now time.Time) (*Task, error)
	// Rebuild queues a copy of a done task (same submission, manifest and
	// configuration) and returns the new task; a task that has not
	// finished is ErrNotFinished.
	Rebuild(ctx context.Context, taskID int64, now time.Time) (*Task, error)

	// Live checks that session is active and its task still in hand and
	// returns what its agent needs to know (ErrUnknownSession,
	// ErrSessionExpired otherwise).
	Live(ctx context.Context, session string) (Live, error)
	// AddEvent records an event that an agent reports in its session
	// (Event.Session; TaskID is filled from it), which must be active, as
	// for Live.
	AddEvent(ctx context.Context, e Event) (Live, error)
	// AppendLog stores a chunk of a session's live log, as for Live. What
	// the session's chunks hold past limit bytes is dropped (Live.Kept
	// says how much of this chunk was kept); a chunk at an operation's
	// offset already stored is not stored again.
	AppendLog(ctx context.Context, c LogChunk, limit int64) (Live, error)
	// LiveLog returns the live log chunks of a task's session (its last
	// one when session is ""), those with an ID above after, in order, at
	// most limit of them (0 means 1000).
	LiveLog(ctx context.Context, taskID int64, session string, after int64, limit int) ([]LogChunk, error)
	// PruneLiveLogs deletes the live logs of tasks that finished before
	// before, and returns how many chunks it deleted.
	PruneLiveLogs(ctx context.Context, before time.Time) (int64, error)
	// Timeline returns a task's history in time order: queued, each
	// claim (Detail: the agent), the events agents reported, requeues,
	// cancels and rebuilds, and its result.
	Timeline(ctx context.Context, taskID int64) ([]Event, error)

	// Close releases the database.
	Close() error
}

// Event kinds of a task's timeline.
const (
	EventQueued    = "queued"        // submitted (or rebuilt: Detail names the task it rebuilds)
	EventClaimed   = "claimed"       // given to an agent (Detail) in a session
	EventBooted    = "booted"        // the agent: the VM made its first request
	EventStarted   = "started"       // the agent: an operation started
	EventFinished  = "finished"      // the agent: an operation finished, with its Status
	EventRequeued  = "requeued"      // the session ended without a result (Detail: why); queued again
	EventCancel    = "cancel"        // a cancel was asked for (Detail: the reason)
	EventRebuilt   = "rebuilt"       // a copy was queued (Detail: the new task)
	EventTruncated = "log-truncated" // the session's live log reached its limit
	EventResult    = "result"        // the result was stored, with its Status
	EventEnded     = "ended"         // ended without a result (Status, Detail: why)
)

// Event is one entry of a task's timeline.
type Event struct {
	ID        int64 // 0 for the entries Timeline makes from tasks, sessions and results
	TaskID    int64
	Session   string
	At        time.Time
	Kind      string
	Operation string
	Status    string
	Detail    string
}

// LogChunk is a piece of an operation's output as it was written.
type LogChunk struct {
	ID        int64
	TaskID    int64 // filled from Session by AppendLog
	Session   string
	Operation string
	Offset    int64 // where Data starts in the operation's output
	At        time.Time
	Data      []byte
}

// Live is what a running session's agent learns when it reports.
type Live struct {
	TaskID int64
	// Cancel is why the task is being cancelled, "" when it is not.
	Cancel string
	// Kept is how many bytes of an appended chunk were stored; LogBytes
	// how many the session's live log holds.
	Kept     int
	LogBytes int64
}
