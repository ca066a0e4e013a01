package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
)

//go:embed migrations
var migrationFiles embed.FS

// migration is one numbered schema change.
type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations reads the migrations in dir, ordered by version.
func loadMigrations(dir string) ([]migration, error) {
	entries, err := fs.ReadDir(migrationFiles, dir)
	if err != nil {
		return nil, fmt.Errorf("migrations %s: %w", dir, err)
	}
	var ms []migration
	for _, e := range entries {
		name := e.Name()
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 || !strings.HasSuffix(name, ".sql") {
			return nil, fmt.Errorf("migration %s/%s: want a name NNNN_what.sql", dir, name)
		}
		text, err := fs.ReadFile(migrationFiles, path.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("migration %s/%s: %w", dir, name, err)
		}
		if len(ms) > 0 && ms[len(ms)-1].version == v {
			return nil, fmt.Errorf("migration %s/%s: version %d twice", dir, name, v)
		}
		ms = append(ms, migration{version: v, name: name, sql: string(text)})
	}
	slices.SortFunc(ms, func(a, b migration) int { return a.version - b.version })
	return ms, nil
}

// migrations is the directory of the store's migrations: files
// NNNN_what.sql, applied in the order of NNNN, each once.
func (s *sqlStore) migrations() string { return "migrations/" + s.d.name }

// migrate applies the migrations the database lacks, each in
// its own transaction that also records it in schema_migrations. It holds
// the dialect's migration lock throughout (an advisory lock on
// PostgreSQL), so that controllers starting together apply each migration
// once; inside the transaction it checks again, for databases without such
// a lock (SQLite's write transaction serialises there).
func (s *sqlStore) migrate(ctx context.Context) error {
	ms, err := loadMigrations(s.migrations())
	if err != nil {
		return err
	}
	conn, err := s.w.Conn(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer conn.Close()
	if s.d.lock != "" {
		if _, err := conn.ExecContext(ctx, s.d.lock); err != nil {
			return fmt.Errorf("migrate: lock: %w", err)
		}
		defer func() {
			// A fresh context: the lock must go even when ctx has ended.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := conn.ExecContext(ctx, s.d.unlock); err != nil {
				s.log.Warn("store: migration unlock failed", "store", s.name, "err", err)
				conn.Raw(func(any) error { return driver.ErrBadConn }) // drop the connection, and its lock
			}
		}()
	}
	if _, err := conn.ExecContext(ctx, s.d.migrationsTable); err != nil {
		return fmt.Errorf("migrate: schema_migrations: %w", err)
	}
	var newest int
	if err := conn.QueryRowContext(ctx, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations").Scan(&newest); err != nil {
		return fmt.Errorf("migrate: schema_migrations: %w", err)
	}
	if known := ms[len(ms)-1].version; newest > known {
		return fmt.Errorf("migrate: the database's schema is at version %d, newer than this program's %d: upgrade buildfarm", newest, known)
	}
	for _, m := range ms {
		if m.version <= newest {
			continue
		}
		applied, err := s.apply(ctx, conn, m)
		if err != nil {
			return fmt.Errorf("migrate: %s: %w", m.name, err)
		}
		if applied {
			s.log.Info("store: schema migrated", "store", s.name, "migration", m.name)
		}
	}
	return nil
}

// apply applies one migration in a transaction, unless it was applied
// since the caller looked.
func (s *sqlStore) apply(ctx context.Context, conn *sql.Conn, m migration) (bool, error) {
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM schema_migrations WHERE version = $1", m.version).Scan(&n); err != nil {
		return false, err
	}
	if n > 0 {
		return false, nil
	}
	if _, err := tx.ExecContext(ctx, m.sql); err != nil {
		return false, err
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO schema_migrations (version, name, applied) VALUES ($1, $2, $3)",
		m.version, m.name, now()); err != nil {
		return false, err
	}
	return true, tx.Commit()
}
