package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
	"modernc.org/sqlite"               // the "sqlite" database/sql driver
	sqlite3 "modernc.org/sqlite/lib"
)

// Open opens the store that dsn names and migrates its schema to the
// newest version. A dsn that starts with postgres:// or postgresql:// is a
// PostgreSQL connection string (libpq's URL form, as pgx reads it);
// anything else is the path of a SQLite database file, created if missing
// (its directory must exist). log receives the migrations applied; nil
// discards.
func Open(ctx context.Context, dsn string, log *slog.Logger) (Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	switch {
	case dsn == "":
		return nil, errors.New("open store: empty database name: give a SQLite file path or a postgres:// URL")
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		return openPostgres(ctx, dsn, log)
	}
	if i := strings.Index(dsn, "://"); i > 0 && !strings.ContainsAny(dsn[:i], "/.") {
		return nil, fmt.Errorf("open store %q: unknown database scheme %q: want postgres:// or a SQLite file path", dsn, dsn[:i])
	}
	return openSQLite(ctx, dsn, log)
}

// openSQLite opens the SQLite database file path with two pools: one
// connection for every write, so that writers in this process queue in Go
// rather than meet SQLITE_BUSY, and several read-only connections, which
// WAL lets read while the writer writes. Writers in other processes wait
// for the busy timeout.
func openSQLite(ctx context.Context, path string, log *slog.Logger) (Store, error) {
	if strings.ContainsAny(path, "?#") || strings.HasPrefix(path, "file:") {
		return nil, fmt.Errorf("open store %q: a SQLite database is named by a plain file path, without file:, ? or #", path)
	}
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return nil, fmt.Errorf("open store %s: is a directory, want a SQLite database file", path)
	}
	if dir := filepath.Dir(path); dir != "" {
		if _, err := os.Stat(dir); err != nil {
			return nil, fmt.Errorf("open store %s: directory: %w", path, err)
		}
	}
	params := func(txlock string, extra ...string) string {
		q := url.Values{}
		q.Add("_pragma", "busy_timeout(10000)")
		q.Add("_pragma", "foreign_keys(1)")
		q.Add("_pragma", "synchronous(NORMAL)")
		for _, p := range extra {
			q.Add("_pragma", p)
		}
		q.Set("_txlock", txlock)
		q.Set("_time_integer_format", "unix_micro")
		return path + "?" + q.Encode()
	}
	w, err := sql.Open("sqlite", params("immediate"))
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	// The writer connection, opened first, creates the file and turns WAL on.
	if err := walMode(ctx, w); err != nil {
		w.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	r, err := sql.Open("sqlite", params("deferred", "query_only(1)"))
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	r.SetMaxOpenConns(4)
	r.SetMaxIdleConns(4)
	s := &sqlStore{name: path, w: w, r: r, d: sqliteDialect, log: log,
		rs: &stmtCache{pool: r}, ws: &stmtCache{pool: w}}
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	return s, nil
}

// walMode puts the SQLite database of db in WAL mode. Switching needs the
// database to itself, and SQLite does not wait for that with the busy
// timeout: walMode tries again for as long.
func walMode(ctx context.Context, db *sql.DB) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		var mode string
		err := db.QueryRowContext(ctx, "PRAGMA journal_mode = WAL").Scan(&mode)
		var se *sqlite.Error
		if errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_BUSY && time.Now().Before(deadline) {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("journal mode WAL: %w", err)
		}
		if !strings.EqualFold(mode, "wal") {
			return fmt.Errorf("journal mode is %q, want wal (a file system without shared memory?)", mode)
		}
		return nil
	}
}

// openPostgres opens a pool of connections to the PostgreSQL database that
// dsn names.
func openPostgres(ctx context.Context, dsn string, log *slog.Logger) (Store, error) {
	name := redact(dsn)
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", name, err)
	}
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(16)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", name, err)
	}
	s := &sqlStore{name: name, w: db, r: db, d: postgresDialect, log: log}
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open store %s: %w", name, err)
	}
	return s, nil
}

// redact returns a PostgreSQL URL without its password, for messages.
func redact(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return "postgres://(unparsable URL)"
	}
	return u.Redacted()
}
