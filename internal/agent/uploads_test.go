package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/tftp"
	"github.com/buildfarm/buildfarm/internal/worker"
)

// uploadSession serves a build session's directory with the agent's TFTP
// server, as a VM run does (its rules, limits and hooks), on loopback,
// without a VM; it returns the session and the server's address.
func uploadSession(t *testing.T, log *logBuffer) (*session, string) {
	t.Helper()
	o := fakeOptions(t)
	a, err := New(o, slog.New(slog.NewTextHandler(log, nil)), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	s := a.newSession(0, filepath.Join(t.TempDir(), "busybox-snapshot"), worker.ModeBuild)
	s.tftpDir = t.TempDir()
	if err := s.prepare(); err != nil {
		t.Fatal(err)
	}
	if err := s.writeKey(); err != nil {
		t.Fatal(err)
	}
	rules, err := parseRules(tftpRules)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.newVMRun(s).tftpServer(rules, nil, nil).Serve(ctx, conn)
	}()
	t.Cleanup(func() { cancel(); <-done; conn.Close() })
	return s, conn.LocalAddr().String()
}

// repeated is an endless reader of its pattern.
type repeated struct {
	p   []byte
	off int
}

func (r *repeated) Read(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		c := copy(b[n:], r.p[r.off:])
		n += c
		r.off = (r.off + c) % len(r.p)
	}
	return n, nil
}

// heapPeak samples the heap in use while it runs; stop returns the most
// seen above what was in use at the start.
func heapPeak() (stop func() uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	var peak atomic.Uint64
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > base && ms.HeapAlloc-base > peak.Load() {
				peak.Store(ms.HeapAlloc - base)
			}
			select {
			case <-t.C:
			case <-quit:
				return
			}
		}
	}()
	return func() uint64 { close(quit); <-done; return peak.Load() }
}

// TestHostileUploads is issue 13's "the guest can exhaust the agent's
// memory and flood its log": a step uploads a 100 MB progress report, 20
// MB of tiny manifests, a progress report of one huge value, and a report
// of thousands of manifests. The agent's heap
// stays within a few MiB of where it was, each of its log lines within a
// few hundred bytes, and a well-formed report is still logged.
func TestHostileUploads(t *testing.T) {
	var log logBuffer
	_, addr := uploadSession(t, &log)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	put := func(name string, r io.Reader, size int64) error {
		return tftp.Put(ctx, addr, name, r, size, worker.DefaultConfig().TFTPOptions())
	}

	peak := heapPeak()
	hundred := io.LimitReader(&repeated{p: []byte("step: configure\nstate: started\n")}, 100<<20)
	if err := put(worker.ProgressFile, hundred, -1); err == nil {
		t.Error("a 100 MB progress report was accepted")
	}
	tiny := io.LimitReader(&repeated{p: []byte(": 1\na: b\n\n")}, 20<<20)
	if err := put(worker.ProgressFile, tiny, -1); err == nil {
		t.Error("20 MB of tiny manifests were accepted as a progress report")
	}
	// Within the size, past the parse's limits: thousands of manifests.
	many := bytes.Repeat([]byte(": 1\na: b\n"), maxProgress/16)
	if err := put(worker.ProgressFile, bytes.NewReader(many), int64(len(many))); err != nil {
		t.Errorf("a small progress report was refused: %v", err)
	}
	// One huge value of quotes and backslashes (a manifest holds no
	// control characters), logged cut and escaped.
	huge := ": 1\nsequence: 1\nstep: configure\nstate: started\ncommand: " + strings.Repeat(`"q" \ `, maxProgress/8) + "\n"
	if err := put(worker.ProgressFile, strings.NewReader(huge), int64(len(huge))); err != nil {
		t.Errorf("a progress report of %d bytes was refused: %v", len(huge), err)
	}
	if got := peak(); got > 16<<20 {
		t.Errorf("the agent's heap grew by %d MiB while the guest uploaded, want at most 16", got>>20)
	}

	// Wait for the last report's log line.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(log.String(), "bytes more") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	lines := strings.Split(log.String(), "\n")
	for _, l := range lines {
		if len(l) > 1024 {
			t.Errorf("log line of %d bytes: %.200s...", len(l), l)
		}
	}
	var logged string
	for _, l := range lines {
		if strings.Contains(l, "msg=guest ") {
			logged = l
		}
	}
	if !strings.Contains(logged, "step=configure") || !strings.Contains(logged, `\"q\" \\`) || !strings.Contains(logged, "bytes more") {
		t.Logf("log:\n%s", log.String())
		t.Errorf("the well-formed report was not logged as a bounded, escaped excerpt: %q", logged)
	}
	if !strings.Contains(log.String(), "progress report not read") {
		t.Errorf("the report of thousands of manifests was not refused by the parse's limits; log:\n%s", log.String())
	}
}

// TestResultUploads checks the result key's rules: the key is served once;
// a result under the plain name, or any name the worker does not send, is
// refused; the keyed result is taken once.
func TestResultUploads(t *testing.T) {
	var log logBuffer
	s, addr := uploadSession(t, &log)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	opts := worker.DefaultConfig().TFTPOptions()
	var key bytes.Buffer
	if _, err := tftp.Get(ctx, addr, worker.KeyFile, &key, opts); err != nil || strings.TrimSpace(key.String()) != s.key {
		t.Fatalf("Get(%s) = %q, %v; want the session's key", worker.KeyFile, key.String(), err)
	}
	var again bytes.Buffer
	_, err := tftp.Get(ctx, addr, worker.KeyFile, &again, opts)
	var te *tftp.Error
	if !errors.As(err, &te) || te.Code != tftp.ErrNotFound {
		t.Errorf("second Get(%s) = %q, %v; want not found", worker.KeyFile, again.String(), err)
	}
	forged := []byte(": 1\nname: hello\nversion: 1.0.0\nstatus: success\n")
	put := func(name string) error {
		return tftp.Put(ctx, addr, name, bytes.NewReader(forged), int64(len(forged)), opts)
	}
	for _, name := range []string{worker.ResultFile, "result-.manifest", "get/" + worker.KeyFile, "sub/dir", "anything"} {
		if err := put(name); !errors.As(err, &te) || te.Code != tftp.ErrAccess {
			t.Errorf("Put(%s) = %v, want access refused", name, err)
		}
	}
	if err := put(worker.ResultName(s.key)); err != nil {
		t.Errorf("Put(the keyed result) = %v", err)
	}
	if err := put(worker.ResultName(s.key)); !errors.As(err, &te) || !strings.Contains(te.Message, "already uploaded") {
		t.Errorf("second Put(the keyed result) = %v, want already uploaded", err)
	}
	if err := put(worker.ArtifactPrefix + "x"); err != nil {
		t.Errorf("Put(an artifact) = %v", err)
	}
	des, _ := os.ReadDir(s.putDir())
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	if len(names) != 2 {
		t.Errorf("put/ holds %v, want the keyed result and the artifact", names)
	}
}

// TestProgressLogRate checks that a flood of progress reports is logged
// at most progressLogRate a second, with one line saying how many were
// not.
func TestProgressLogRate(t *testing.T) {
	var l logLimiter
	t0 := time.Now()
	logged, dropped := 0, 0
	for i := range 1000 {
		ok, d := l.allow(t0.Add(time.Duration(i) * time.Millisecond)) // 1000 a second
		if ok {
			logged++
		}
		dropped += d
	}
	ok, d := l.allow(t0.Add(2 * time.Second))
	dropped += d
	if !ok || logged != progressLogRate || dropped != 1000-progressLogRate {
		t.Errorf("1000 reports in a second: %d logged, %d said dropped; want %d and %d", logged, dropped, progressLogRate, 1000-progressLogRate)
	}
}
