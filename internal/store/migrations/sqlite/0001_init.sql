-- The controller's state. Times are microseconds since the Unix epoch, UTC;
-- NULL where a time is not (yet) set. Durations are nanoseconds.

CREATE TABLE submissions (
	id         INTEGER PRIMARY KEY AUTOINCREMENT,
	created    INTEGER NOT NULL,
	name       TEXT NOT NULL,
	version    TEXT NOT NULL,
	archive    TEXT NOT NULL DEFAULT '',
	repository TEXT NOT NULL DEFAULT '',
	revision   TEXT NOT NULL DEFAULT '',
	configs    TEXT NOT NULL DEFAULT '[]', -- JSON array of strings
	toolchain  TEXT NOT NULL DEFAULT '',
	priority   INTEGER NOT NULL DEFAULT 0,
	submitter  TEXT NOT NULL DEFAULT ''
);

CREATE TABLE tasks (
	id              INTEGER PRIMARY KEY AUTOINCREMENT,
	submission_id   INTEGER NOT NULL REFERENCES submissions (id) ON DELETE CASCADE,
	name            TEXT NOT NULL,
	version         TEXT NOT NULL,
	config          TEXT NOT NULL,
	machine_pattern TEXT NOT NULL DEFAULT '',
	target          TEXT NOT NULL DEFAULT '',
	toolchain       TEXT NOT NULL DEFAULT '',
	priority        INTEGER NOT NULL DEFAULT 0,
	manifest        TEXT NOT NULL DEFAULT '',
	timeout_ns      INTEGER NOT NULL DEFAULT 0,
	state           TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done')),
	attempts        INTEGER NOT NULL DEFAULT 0,
	created         INTEGER NOT NULL,
	claimed         INTEGER,
	finished        INTEGER,
	agent           TEXT NOT NULL DEFAULT '',
	machine         TEXT NOT NULL DEFAULT '',
	session         TEXT NOT NULL DEFAULT '',
	lease_expires   INTEGER,
	status          TEXT NOT NULL DEFAULT '',
	reason          TEXT NOT NULL DEFAULT ''
);
-- Claim: the best queued task, highest priority first, then the oldest.
CREATE INDEX tasks_queue ON tasks (priority DESC, id) WHERE state = 'queued';
-- Expire: running tasks by the end of their lease.
CREATE INDEX tasks_lease ON tasks (lease_expires) WHERE state = 'running';
CREATE INDEX tasks_submission ON tasks (submission_id);

CREATE TABLE sessions (
	id          TEXT PRIMARY KEY,
	task_id     INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
	agent       TEXT NOT NULL,
	fingerprint TEXT NOT NULL DEFAULT '',
	challenge   TEXT NOT NULL DEFAULT '',
	created     INTEGER NOT NULL,
	expires     INTEGER NOT NULL,
	state       TEXT NOT NULL CHECK (state IN ('active', 'done', 'expired'))
);
CREATE INDEX sessions_task ON sessions (task_id);

-- A done task's result manifest, compressed (encoding names how).
CREATE TABLE results (
	task_id  INTEGER PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
	session  TEXT NOT NULL,
	stored   INTEGER NOT NULL,
	encoding TEXT NOT NULL,
	size     INTEGER NOT NULL, -- bytes before compression
	data     BLOB NOT NULL
);

CREATE TABLE agents (
	name        TEXT PRIMARY KEY,
	toolchain   TEXT NOT NULL DEFAULT '',
	version     TEXT NOT NULL DEFAULT '',
	fingerprint TEXT NOT NULL DEFAULT '',
	machines    TEXT NOT NULL DEFAULT '[]', -- JSON array of {id, name, summary}
	last_seen   INTEGER NOT NULL,
	address     TEXT NOT NULL DEFAULT ''
);

CREATE TABLE agent_keys (
	fingerprint TEXT PRIMARY KEY,
	pem         BLOB NOT NULL,
	name        TEXT NOT NULL DEFAULT '',
	added       INTEGER NOT NULL
);

CREATE TABLE archives (
	sha256 TEXT PRIMARY KEY,
	size   INTEGER NOT NULL,
	added  INTEGER NOT NULL,
	data   BLOB NOT NULL
);
