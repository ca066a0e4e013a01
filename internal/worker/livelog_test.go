package worker

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestLiveWriter sends output as it is written, in chunks over TFTP, up
// to the limit: the chunks put together are the output's start.
func TestLiveWriter(t *testing.T) {
	dir := t.TempDir()
	w := testWorker(t, agentSide(t, dir), ModeBuild)
	w.cfg.LiveLimit = 100 << 10
	l := w.startLive(t.Context(), "update")
	l.Write([]byte("first line <b>\n"))
	// It arrives before Close, within a few flushes.
	deadline := time.Now().Add(10 * time.Second)
	for {
		files, _ := filepath.Glob(filepath.Join(dir, "put", LiveFilePrefix+"*"))
		if len(files) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no live chunk uploaded within 10 s of the write")
		}
		time.Sleep(20 * time.Millisecond)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 10<<10) // 160 KiB, past the limit
	l.Write(big)
	l.Close(t.Context())
	files, _ := filepath.Glob(filepath.Join(dir, "put", LiveFilePrefix+"*"))
	slices.Sort(files)
	var all []byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		c, err := ParseLiveChunk(b, f)
		if err != nil {
			t.Fatal(err)
		}
		if c.Operation != "update" || c.Offset != int64(len(all)) || len(c.Data) > liveChunk {
			t.Errorf("%s: operation %q at %d with %d bytes; want update at %d, at most %d", f, c.Operation, c.Offset, len(c.Data), len(all), liveChunk)
		}
		all = append(all, c.Data...)
	}
	want := append([]byte("first line <b>\n"), big...)[:100<<10]
	if !bytes.Equal(all, want) {
		t.Errorf("live chunks hold %d bytes, want the output's first %d", len(all), len(want))
	}
}

func TestParseLiveChunk(t *testing.T) {
	for _, bad := range []string{"", "buildfarm-live 1 update\nx", "buildfarm-live 2 update 0\nx", "buildfarm-live 1 update -1\n", "nonsense"} {
		if _, err := ParseLiveChunk([]byte(bad), "f"); err == nil || !strings.Contains(err.Error(), "live chunk f") {
			t.Errorf("ParseLiveChunk(%q) = %v, want an error naming the file", bad, err)
		}
	}
	c, err := ParseLiveChunk([]byte("buildfarm-live 1 test 42\nabc\n"), "f")
	if err != nil || c.Operation != "test" || c.Offset != 42 || string(c.Data) != "abc\n" {
		t.Errorf("ParseLiveChunk = %+v, %v", c, err)
	}
}

func FuzzParseLiveChunk(f *testing.F) {
	f.Add([]byte("buildfarm-live 1 test 42\nabc\n"))
	f.Add([]byte("buildfarm-live 1 x 0\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseLiveChunk(b, "f")
		if err == nil && (c.Offset < 0 || c.Operation == "" || len(c.Data) >= len(b)) {
			t.Errorf("ParseLiveChunk(%q) = %+v without an error", b, c)
		}
	})
}
