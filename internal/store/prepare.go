package store

import (
	"context"
	"database/sql"
	"sync"
)

// stmtCache keeps one pool's prepared statements by their text, for
// SQLite, which otherwise parses each statement every time it runs. (pgx
// keeps its own cache of prepared statements on each connection.)
type stmtCache struct {
	pool   *sql.DB
	m      sync.Map // string → *sql.Stmt
	missed sync.Map // string → struct{}: asked for in a transaction, not yet prepared
}

// get returns q prepared, or nil if it cannot be; the caller then runs q
// unprepared, and so reports the error.
func (c *stmtCache) get(ctx context.Context, q string) *sql.Stmt {
	if c == nil {
		return nil
	}
	if st, ok := c.m.Load(q); ok {
		return st.(*sql.Stmt)
	}
	st, err := c.pool.PrepareContext(ctx, q)
	if err != nil {
		return nil
	}
	if prev, loaded := c.m.LoadOrStore(q, st); loaded {
		st.Close()
		return prev.(*sql.Stmt)
	}
	return st
}

// lookup returns q prepared if it was, or nil. In a transaction, which may
// hold the pool's only connection, a statement cannot be prepared on the
// pool: lookup notes it, for prepareMissed after the transaction.
func (c *stmtCache) lookup(q string) *sql.Stmt {
	if c == nil {
		return nil
	}
	if st, ok := c.m.Load(q); ok {
		return st.(*sql.Stmt)
	}
	c.missed.Store(q, struct{}{})
	return nil
}

// prepareMissed prepares the statements that lookup missed.
func (c *stmtCache) prepareMissed(ctx context.Context) {
	if c == nil {
		return
	}
	c.missed.Range(func(q, _ any) bool {
		c.missed.Delete(q)
		c.get(ctx, q.(string))
		return true
	})
}

func (c *stmtCache) close() {
	if c == nil {
		return
	}
	c.m.Range(func(_, st any) bool {
		st.(*sql.Stmt).Close()
		return true
	})
}

// The ways the store runs a statement: on the read pool, the write pool, or
// in a write transaction; prepared where the store caches statements.

func (s *sqlStore) readRow(ctx context.Context, q string, args ...any) *sql.Row {
	if st := s.rs.get(ctx, q); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return s.r.QueryRowContext(ctx, q, args...)
}

func (s *sqlStore) read(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	if st := s.rs.get(ctx, q); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return s.r.QueryContext(ctx, q, args...)
}

func (s *sqlStore) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	if st := s.ws.get(ctx, q); st != nil {
		return st.ExecContext(ctx, args...)
	}
	return s.w.ExecContext(ctx, q, args...)
}

func (s *sqlStore) writeRow(ctx context.Context, q string, args ...any) *sql.Row {
	if st := s.ws.get(ctx, q); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return s.w.QueryRowContext(ctx, q, args...)
}

func (s *sqlStore) txRow(ctx context.Context, tx *sql.Tx, q string, args ...any) *sql.Row {
	if st := s.ws.lookup(q); st != nil {
		return tx.StmtContext(ctx, st).QueryRowContext(ctx, args...)
	}
	return tx.QueryRowContext(ctx, q, args...)
}

func (s *sqlStore) txRows(ctx context.Context, tx *sql.Tx, q string, args ...any) (*sql.Rows, error) {
	if st := s.ws.lookup(q); st != nil {
		return tx.StmtContext(ctx, st).QueryContext(ctx, args...)
	}
	return tx.QueryContext(ctx, q, args...)
}

func (s *sqlStore) txExec(ctx context.Context, tx *sql.Tx, q string, args ...any) (sql.Result, error) {
	if st := s.ws.lookup(q); st != nil {
		return tx.StmtContext(ctx, st).ExecContext(ctx, args...)
	}
	return tx.ExecContext(ctx, q, args...)
}
