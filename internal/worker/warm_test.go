package worker

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

func TestStartRoundTrip(t *testing.T) {
	for _, s := range []*Start{
		{Time: time.Date(2026, 12, 2, 7, 0, 0, 123456789, time.UTC), Random: bytes.Repeat([]byte{0xab}, 64)},
		{Time: time.Date(2026, 12, 2, 7, 0, 0, 0, time.UTC), Random: bytes.Repeat([]byte{1}, 32), MAC: "02:12:34:56:78:9a", TFTP: "10.0.3.1:23401"},
	} {
		var b bytes.Buffer
		if err := manifest.Serialize(&b, []manifest.Manifest{s.Manifest()}); err != nil {
			t.Fatal(err)
		}
		got, err := ParseStart(&b, "start")
		if err != nil {
			t.Fatal(err)
		}
		if !got.Time.Equal(s.Time) || !bytes.Equal(got.Random, s.Random) || got.MAC != s.MAC || got.TFTP != s.TFTP {
			t.Errorf("ParseStart = %+v, want %+v", got, s)
		}
	}
}

// TestChannelStart hands a start request to a worker that awaits one:
// the request's answer is what applying it gave; a bad manifest is
// refused before.
func TestChannelStart(t *testing.T) {
	c := &Channel{starts: make(chan startRequest)}
	s := &Start{Time: time.Now(), Random: bytes.Repeat([]byte{1}, 32), MAC: "02:00:00:00:00:01", TFTP: "10.0.3.1:23401"}
	var b bytes.Buffer
	if err := manifest.Serialize(&b, []manifest.Manifest{s.Manifest()}); err != nil {
		t.Fatal(err)
	}
	go func() {
		r := <-c.starts
		r.done <- fmt.Errorf("no lease for %s", r.start.MAC)
	}()
	if _, err := c.do(ChannelRequest{ID: 1, Op: "start", Arg: b.String()}); err == nil || err.Error() != "no lease for 02:00:00:00:00:01" {
		t.Errorf("start request: %v, want the worker's error", err)
	}
	if _, err := c.do(ChannelRequest{ID: 2, Op: "start", Arg: ": 1\n"}); err == nil || !strings.Contains(err.Error(), "start request") {
		t.Errorf("start request without time and random: %v, want an error naming it", err)
	}
}

func TestParseStartErrors(t *testing.T) {
	rnd := strings.Repeat("ab", 32)
	for _, tc := range []struct{ in, want string }{
		{": 2\ntime: 2026-12-02T07:00:00Z\nrandom: " + rnd + "\n", "format version 2"},
		{": 1\ntime: yesterday\nrandom: " + rnd + "\n", "time \"yesterday\""},
		{": 1\ntime: 2026-12-02T07:00:00Z\nrandom: abc\n", "random"},
		{": 1\ntime: 2026-12-02T07:00:00Z\nrandom: abcd\n", "2 bytes, want 32 to 512"},
		{": 1\ntime: 2026-12-02T07:00:00Z\n", "want the fields time and random"},
		{": 1\ntime: 2026-12-02T07:00:00Z\nrandom: " + rnd + "\nmask: x\n", "unknown field \"mask\""},
		{": 1\ntime: 2026-12-02T07:00:00Z\nrandom: " + rnd + "\nmac: x\n", "mac \"x\""},
		{": 1\ntime: 2026-12-02T07:00:00Z\nrandom: " + rnd + "\nmac: 01:00:5e:00:00:01\n", "unicast"},
		{": 1\ntime: 2026-12-02T07:00:00Z\nrandom: " + rnd + "\ntftp: 10.0.3.1\n", "HOST:PORT"},
		{": 1\ntime: 2026-12-02T07:00:00Z\ntime: 2026-12-02T07:00:00Z\nrandom: " + rnd + "\n", "time given twice"},
	} {
		_, err := ParseStart(strings.NewReader(tc.in), "start")
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "start") {
			t.Errorf("ParseStart(%q) = %v, want an error naming start and saying %q", tc.in, err, tc.want)
		}
	}
}

func FuzzParseStart(f *testing.F) {
	f.Add(": 1\ntime: 2026-12-02T07:00:00Z\nrandom: " + strings.Repeat("00", 32) + "\n")
	f.Add(": 1\n")
	f.Fuzz(func(t *testing.T, in string) {
		s, err := ParseStart(strings.NewReader(in), "start")
		if err != nil {
			return
		}
		var b bytes.Buffer
		if err := manifest.Serialize(&b, []manifest.Manifest{s.Manifest()}); err != nil {
			t.Fatal(err)
		}
		s2, err := ParseStart(&b, "start")
		if err != nil || !s2.Time.Equal(s.Time) || !bytes.Equal(s2.Random, s.Random) {
			t.Fatalf("round trip of %q: %+v, %v", in, s2, err)
		}
	})
}

// TestAwaitStart runs a build that waits for the start file, which comes
// only later: the worker asks until it is there, then builds.
func TestAwaitStart(t *testing.T) {
	session := t.TempDir()
	addr := agentSide(t, session)
	placeTask(t, session, "hello")
	w := testWorker(t, addr, ModeBuild)
	w.cfg.AwaitStart = true
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	time.Sleep(300 * time.Millisecond)
	if _, err := os.Stat(filepath.Join(session, "put", ProgressFile)); err == nil {
		t.Fatal("the worker went on without the start file")
	}
	select {
	case err := <-done:
		t.Fatalf("Run returned %v without the start file", err)
	default:
	}
	s := &Start{Time: time.Now(), Random: bytes.Repeat([]byte{1}, 32)}
	tmp := filepath.Join(session, "start.tmp")
	if err := manifest.WriteFile(tmp, []manifest.Manifest{s.Manifest()}); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(session, "get", StartFile)); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if res := readResult(t, session); res.Status != manifest.StatusSuccess {
		t.Errorf("status %v, want success", res.Status)
	}
}

// TestAwaitReady: with ReadyEnv set, the worker fetches its task but
// touches its directory only once the init's file is there, and then
// runs the task.
func TestAwaitReady(t *testing.T) {
	session := t.TempDir()
	addr := agentSide(t, session)
	placeTask(t, session, "hello")
	t.Chdir(t.TempDir()) // awaitReady enters the work directory
	ready := filepath.Join(t.TempDir(), "ready")
	t.Setenv(ReadyEnv, ready)
	w := testWorker(t, addr, ModeBuild)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(session, "put", ProgressFile)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no progress report from the worker before the guest's set-up is done")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	if ents, err := os.ReadDir(w.cfg.Dir); err != nil || len(ents) > 0 {
		t.Fatalf("the worker touched its directory before the set-up was done: %v, %v", ents, err)
	}
	select {
	case err := <-done:
		t.Fatalf("Run returned %v before the set-up was done", err)
	default:
	}
	if err := os.WriteFile(ready, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if res := readResult(t, session); res.Status != manifest.StatusSuccess {
		t.Errorf("status %v, want success", res.Status)
	}
	if wd, err := os.Getwd(); err != nil || wd != w.cfg.Dir {
		t.Errorf("working directory %q, %v; want the work directory %s", wd, err, w.cfg.Dir)
	}
}

func TestParseCmdlineStart(t *testing.T) {
	c := DefaultConfig()
	if err := c.ParseCmdline("quiet " + StartWaitArg); err != nil || !c.AwaitStart {
		t.Errorf("ParseCmdline(%s) = %v, AwaitStart %v", StartWaitArg, err, c.AwaitStart)
	}
	if err := c.ParseCmdline(StartChannelArg); err != nil || !c.AwaitStart || !c.StartChannel {
		t.Errorf("ParseCmdline(%s) = %v, AwaitStart %v, StartChannel %v", StartChannelArg, err, c.AwaitStart, c.StartChannel)
	}
	if err := c.ParseCmdline("buildfarm.start=now"); err == nil || !strings.Contains(err.Error(), "buildfarm.start=now") {
		t.Errorf("ParseCmdline(buildfarm.start=now) = %v, want an error naming it", err)
	}
}

// TestAddEntropy checks the random(4) ioctls' numbers and layout against
// the host's kernel (as root: crediting entropy needs CAP_SYS_ADMIN). It
// adds 32 random bytes to the host's pool.
func TestAddEntropy(t *testing.T) {
	testenv.NeedRoot(t)
	b := make([]byte, 32)
	rand.Read(b)
	if err := addEntropy(b); err != nil {
		t.Fatal(err)
	}
}

// TestWarmUp: the warm-up makes the build directory's src and artifacts,
// unpacks and runs a shell in a scratch directory, and leaves nothing else.
func TestWarmUp(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Dir, cfg.StepUID, cfg.StepGID = t.TempDir(), 0, 0
	var logs bytes.Buffer
	w := New(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	w.warmUp(t.Context())
	if !strings.Contains(logs.String(), "warmed up") {
		t.Fatalf("no warm-up in the log:\n%s", logs.String())
	}
	entries, err := os.ReadDir(cfg.Dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if !e.IsDir() {
			t.Errorf("%s is not a directory", e.Name())
		}
		names = append(names, e.Name())
	}
	if got := strings.Join(names, " "); got != "artifacts src" {
		t.Errorf("build directory after the warm-up holds %q, want \"artifacts src\"", got)
	}
	if entries, _ := os.ReadDir(filepath.Join(cfg.Dir, "src")); len(entries) != 0 {
		t.Errorf("src is not empty: %v", entries)
	}
}
