package agent

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/buildfarm/buildfarm/internal/archive"
	"github.com/buildfarm/buildfarm/internal/manifest"
)

// TestWriteTaskSources is issue 13's "a missing archive ships a whole
// directory": a task whose archive is beside it gets that archive; one
// whose archive is missing gets its directory packed, as the examples
// are, unless that directory is not a project's: the root, a directory
// just below it, or a home directory is refused, naming it.
func TestWriteTaskSources(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	task := &manifest.Task{Name: "hello", Version: "1.0.0", Archive: "hello.tar.gz"}

	project := t.TempDir()
	os.WriteFile(filepath.Join(project, "configure"), []byte("#!/bin/sh\n"), 0o755)
	get := t.TempDir()
	if err := WriteTask(get, task, project); err != nil {
		t.Fatalf("WriteTask(a project without its archive) = %v", err)
	}
	f, err := os.Open(filepath.Join(get, task.Archive))
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	err = archive.Unpack(f, out)
	f.Close()
	if _, serr := os.Stat(filepath.Join(out, "configure")); err != nil || serr != nil {
		t.Errorf("the packed directory does not unpack to its files: %v, %v", err, serr)
	}

	os.WriteFile(filepath.Join(project, task.Archive), []byte("the archive"), 0o644)
	if err := WriteTask(get, task, project); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(get, task.Archive)); string(b) != "the archive" {
		t.Errorf("the archive beside the task was not taken as it is: %q", b)
	}

	for _, dir := range []string{"/", "/tmp", home, "/root", "/home/someone"} {
		err := WriteTask(t.TempDir(), task, dir)
		if err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "not packed") {
			t.Errorf("WriteTask(sources %s) = %v, want a refusal naming it", dir, err)
		}
	}
}

func TestLimitedWriter(t *testing.T) {
	var b bytes.Buffer
	w := &limitedWriter{w: &b, left: 10}
	if n, err := w.Write([]byte("0123456789")); n != 10 || err != nil {
		t.Fatalf("Write(10 bytes) = %d, %v", n, err)
	}
	if _, err := w.Write([]byte("x")); !errors.Is(err, errTooBig) {
		t.Errorf("Write past the limit = %v, want errTooBig", err)
	}
}
