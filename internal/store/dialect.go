package store

// sqliteDialect is SQLite's SQL. Its write transactions begin IMMEDIATE
// on the one writer connection, so a SELECT in one reads rows no other
// writer can change before it commits: no row locks are needed.
var sqliteDialect = dialect{
	name: "sqlite",
	migrationsTable: `CREATE TABLE IF NOT EXISTS schema_migrations (
		version INTEGER PRIMARY KEY,
		name    TEXT NOT NULL,
		applied INTEGER NOT NULL)`,
	claim: `UPDATE tasks SET state = 'running', attempts = attempts + 1, agent = $3,
			machine = (SELECT value FROM json_each($1) WHERE key = tasks.config),
			session = $4, claimed = $5, lease_expires = COALESCE($6, $5 + timeout_ns / 1000 + $7)
		WHERE id = (
			SELECT id FROM tasks
			WHERE state = 'queued' AND config IN (SELECT key FROM json_each($1))
				AND (toolchain = '' OR toolchain = $2)
			ORDER BY priority DESC, id LIMIT 1)
		RETURNING ` + taskColumns,
}

// postgresDialect is PostgreSQL's SQL. A claim locks the task it takes and
// passes over those that other controllers are taking (SKIP LOCKED), and
// starts the session in the same statement; a result is usually stored in
// one statement too. Each saves round trips, which bound the throughput.
var postgresDialect = dialect{
	name: "postgres",
	// The key is "buildfarm" as a number; any fixed value would do.
	lock:   `SELECT pg_advisory_lock(6254725418469322093)`,
	unlock: `SELECT pg_advisory_unlock(6254725418469322093)`,
	migrationsTable: `CREATE TABLE IF NOT EXISTS schema_migrations (
		version INTEGER PRIMARY KEY,
		name    TEXT NOT NULL,
		applied TIMESTAMPTZ NOT NULL)`,
	forUpdate:  ` FOR UPDATE`,
	skipLocked: ` FOR UPDATE SKIP LOCKED`,
	claim: `WITH claimed AS (
			SELECT id AS claimed_id FROM tasks
			WHERE state = 'queued' AND config = ANY (ARRAY(SELECT jsonb_object_keys($1::text::jsonb)))
				AND (toolchain = '' OR toolchain = $2)
			ORDER BY priority DESC, id LIMIT 1
			FOR UPDATE SKIP LOCKED),
		task AS (
			UPDATE tasks SET state = 'running', attempts = attempts + 1, agent = $3,
				machine = $1::text::jsonb ->> config,
				session = $4, claimed = $5,
				lease_expires = COALESCE($6, $5::timestamptz + (timeout_ns / 1000 + $7::bigint) * interval '1 microsecond')
			FROM claimed WHERE id = claimed.claimed_id
			RETURNING ` + taskColumns + `),
		session AS (
			INSERT INTO sessions (id, task_id, agent, fingerprint, challenge, created, expires, state)
			SELECT $4, id, $3, $8, $9, $5, lease_expires, 'active' FROM task)
		SELECT ` + taskColumns + ` FROM task`,
	claimSession: true,
	analyze:      `ANALYZE tasks`,
	completeStored: `WITH task AS (
			UPDATE tasks SET state = 'done', status = $2, reason = '', finished = $3
			WHERE id = (SELECT task_id FROM sessions WHERE id = $1 AND state = 'active')
				AND state = 'running' AND session = $1 AND lease_expires >= $3 AND cancel = ''
			RETURNING id),
		session AS (
			UPDATE sessions SET state = 'done' FROM task WHERE sessions.id = $1),
		result AS (
			INSERT INTO results (task_id, session, stored, encoding, size, data)
			SELECT id, $1, $3, $4, $5, $6 FROM task
			ON CONFLICT (task_id) DO UPDATE SET session = excluded.session, stored = excluded.stored,
				encoding = excluded.encoding, size = excluded.size, data = excluded.data)
		SELECT id FROM task`,
}
