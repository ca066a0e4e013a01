-- What happens to a task besides its claims and its result: what its
-- agent reports while it runs (VM booted, each operation started and
-- finished), cancels and rebuilds; and the live log of its sessions.

-- A cancel asked for while the task runs: its agent is told, and the task
-- ends with this reason instead of being queued again.
ALTER TABLE tasks ADD COLUMN cancel TEXT NOT NULL DEFAULT '';

CREATE TABLE task_events (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	task_id   INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
	session   TEXT NOT NULL DEFAULT '',
	at        INTEGER NOT NULL,
	kind      TEXT NOT NULL,
	operation TEXT NOT NULL DEFAULT '',
	status    TEXT NOT NULL DEFAULT '',
	detail    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX task_events_task ON task_events (task_id, id);

-- The output of a session's operations as it was written, in chunks; pos
-- is the chunk's offset in its operation's output, so a chunk sent twice
-- is stored once.
CREATE TABLE log_chunks (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	task_id   INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
	session   TEXT NOT NULL,
	operation TEXT NOT NULL,
	pos       INTEGER NOT NULL,
	at        INTEGER NOT NULL,
	data      BLOB NOT NULL,
	UNIQUE (session, operation, pos)
);
CREATE INDEX log_chunks_task ON log_chunks (task_id, id);
