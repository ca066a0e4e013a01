package pgtest

import (
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestServer(t *testing.T) {
	s := NewServer(t)
	dsn, err := s.NewDatabase(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatalf("connect to %s: %v", dsn, err)
	}
	var db, who string
	if err := conn.QueryRow(t.Context(), "SELECT current_database(), current_user").Scan(&db, &who); err != nil {
		t.Fatal(err)
	}
	conn.Close(t.Context())
	if db != "test1" || who != Superuser {
		t.Errorf("connected to %s as %s, want test1 as %s", db, who, Superuser)
	}
	if os.Geteuid() == 0 {
		st, err := os.Stat(s.dir + "/data")
		if err != nil || st.Sys().(*syscall.Stat_t).Uid == 0 {
			t.Errorf("the data directory is owned by root (%v): the server must run unprivileged", err)
		}
	}
	pid := s.cmd.Process.Pid
	if err := s.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := syscall.Kill(-pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("after Stop, process group %d: %v, want none left", pid, err)
	}
	if _, err := os.Stat(s.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Stop, %s: %v, want it removed", s.dir, err)
	}
	if err := s.Stop(); err != nil {
		t.Errorf("Stop again: %v", err)
	}
	if _, err := pgx.Connect(t.Context(), dsn); err == nil || !strings.Contains(err.Error(), "127.0.0.1") {
		t.Errorf("connect after Stop: %v, want refused", err)
	}
}
