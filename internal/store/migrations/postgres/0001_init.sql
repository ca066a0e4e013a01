-- The controller's state. Times are timestamptz (microseconds), UTC;
-- NULL where a time is not (yet) set. Durations are nanoseconds.

CREATE TABLE submissions (
	id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	created    TIMESTAMPTZ NOT NULL,
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
	id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	submission_id   BIGINT NOT NULL REFERENCES submissions (id) ON DELETE CASCADE,
	name            TEXT NOT NULL,
	version         TEXT NOT NULL,
	config          TEXT NOT NULL,
	machine_pattern TEXT NOT NULL DEFAULT '',
	target          TEXT NOT NULL DEFAULT '',
	toolchain       TEXT NOT NULL DEFAULT '',
	priority        INTEGER NOT NULL DEFAULT 0,
	manifest        TEXT NOT NULL DEFAULT '',
	timeout_ns      BIGINT NOT NULL DEFAULT 0,
	state           TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done')),
	attempts        INTEGER NOT NULL DEFAULT 0,
	created         TIMESTAMPTZ NOT NULL,
	claimed         TIMESTAMPTZ,
	finished        TIMESTAMPTZ,
	agent           TEXT NOT NULL DEFAULT '',
	machine         TEXT NOT NULL DEFAULT '',
	session         TEXT NOT NULL DEFAULT '',
	lease_expires   TIMESTAMPTZ,
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
	task_id     BIGINT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
	agent       TEXT NOT NULL,
	fingerprint TEXT NOT NULL DEFAULT '',
	challenge   TEXT NOT NULL DEFAULT '',
	created     TIMESTAMPTZ NOT NULL,
	expires     TIMESTAMPTZ NOT NULL,
	state       TEXT NOT NULL CHECK (state IN ('active', 'done', 'expired'))
);
CREATE INDEX sessions_task ON sessions (task_id);

-- A done task's result manifest, compressed (encoding names how).
CREATE TABLE results (
	task_id  BIGINT PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
	session  TEXT NOT NULL,
	stored   TIMESTAMPTZ NOT NULL,
	encoding TEXT NOT NULL,
	size     BIGINT NOT NULL, -- bytes before compression
	data     BYTEA NOT NULL
);

CREATE TABLE agents (
	name        TEXT PRIMARY KEY,
	toolchain   TEXT NOT NULL DEFAULT '',
	version     TEXT NOT NULL DEFAULT '',
	fingerprint TEXT NOT NULL DEFAULT '',
	machines    TEXT NOT NULL DEFAULT '[]', -- JSON array of {id, name, summary}
	last_seen   TIMESTAMPTZ NOT NULL,
	address     TEXT NOT NULL DEFAULT ''
);

CREATE TABLE agent_keys (
	fingerprint TEXT PRIMARY KEY,
	pem         BYTEA NOT NULL,
	name        TEXT NOT NULL DEFAULT '',
	added       TIMESTAMPTZ NOT NULL
);

CREATE TABLE archives (
	sha256 TEXT PRIMARY KEY,
	size   BIGINT NOT NULL,
	added  TIMESTAMPTZ NOT NULL,
	data   BYTEA NOT NULL
);

-- Results are compressed before they are stored: PostgreSQL need not try again.
ALTER TABLE results ALTER COLUMN data SET STORAGE EXTERNAL;

-- The queue changes fast, and a claim's plan (an ordered scan of
-- tasks_queue) needs the planner to know how many tasks wait: analyse and
-- vacuum tasks far more often than by default.
ALTER TABLE tasks SET (autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 200,
	autovacuum_vacuum_scale_factor = 0.05, autovacuum_vacuum_threshold = 200);
