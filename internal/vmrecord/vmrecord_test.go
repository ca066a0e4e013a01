package vmrecord

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestWriteReadListRemove(t *testing.T) {
	g := Registry{Dir: filepath.Join(t.TempDir(), "vms")}
	if rs, err := g.List(); err != nil || len(rs) != 0 {
		t.Fatalf("List() of a missing directory = %v, %v; want nothing", rs, err)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	a := Record{Name: "busybox-default-a1", Machine: "busybox", Task: "hello/1.0", State: Running, Since: t0.Add(time.Minute), PID: 42, QMP: "/d/qmp.sock"}
	b := Record{Name: "busybox-default-b2", Machine: "busybox", State: Suspended, Since: t0, Why: "build timeout after 3h", Expires: t0.Add(24 * time.Hour)}
	for _, r := range []Record{a, b} {
		if err := g.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	a.State, a.Why = Suspended, "abnormal end"
	if err := g.Write(a); err != nil { // replaces
		t.Fatal(err)
	}
	rs, err := g.List()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]Record{b, a}, rs); diff != "" {
		t.Errorf("List() (-want +got):\n%s", diff)
	}
	ents, _ := os.ReadDir(g.Dir)
	if len(ents) != 2 {
		t.Errorf("registry holds %d files, want 2 (no temporary files left)", len(ents))
	}
	if err := g.Remove(a.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Read(a.Name); !errors.Is(err, ErrNotFound) {
		t.Errorf("Read after Remove = %v, want ErrNotFound", err)
	}
	if err := g.Remove(a.Name); err != nil {
		t.Errorf("second Remove = %v, want nil", err)
	}
}

func TestBadRecords(t *testing.T) {
	g := Registry{Dir: t.TempDir()}
	for _, r := range []Record{
		{Name: "", State: Running},
		{Name: "../x", State: Running},
		{Name: ".hidden", State: Running},
		{Name: "ok", State: "sleeping"},
	} {
		if err := g.Write(r); err == nil {
			t.Errorf("Write(%+v) = nil, want an error", r)
		}
	}
	if _, err := g.Read("a/b"); err == nil {
		t.Error(`Read("a/b") = nil error, want one`)
	}
	if err := os.WriteFile(filepath.Join(g.Dir, "broken.json"), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := g.List(); err == nil {
		t.Error("List() with a broken record = nil error, want one naming it")
	}
}

func TestAlive(t *testing.T) {
	r := Record{PID: os.Getpid()}
	if r.Alive() {
		t.Error("Alive() for the test process = true, want false (not a QEMU)")
	}
	r.PID = 0
	if r.Alive() {
		t.Error("Alive() for pid 0 = true")
	}
}
