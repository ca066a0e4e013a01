package agent

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/worker"
)

// What the guest uploads is untrusted: a build step can upload under any
// name the worker can. The agent's TFTP server takes an upload only under
// a name of a kind the worker sends, each kind up to its own size, parses
// what it reads with limits of its own, and logs a bounded excerpt.
//
// The result is taken only under the name the result key gives
// (worker.ResultName), and only once: the key is written to get/ for the
// worker, which fetches it before any step runs, and served once
// (tftp.Server.ReadOnce). The steps run as an unprivileged user, so they
// cannot learn it from the worker.
const (
	maxProgress  = 64 << 10  // a progress report
	maxLiveChunk = 64 << 10  // a live log chunk (worker.LiveChunk, 60 KiB and a header)
	maxResult    = 16 << 20  // the result manifest (the worker keeps 512 KiB of each operation's log)
	maxBootstrap = 64 << 10  // the bootstrap manifest
	maxArtifact  = maxUpload // an artifact; all uploads together are bounded by maxUpload too
	// maxExcerpt bounds each value of a progress report that is logged.
	maxExcerpt = 200
)

// progressLimits bound the parse of a progress report: one manifest of a
// few pairs.
var progressLimits = manifest.Limits{Manifests: 1, Pairs: 32}

// resultLimits bound the parse of a result or bootstrap manifest.
var resultLimits = manifest.Limits{Manifests: 1, Pairs: 1000}

// putLimit is the TFTP server's PutLimit for s: the cap of an upload
// named name (beneath the session's directory), or why it is refused.
func (s *session) putLimit(name string) (int64, error) {
	base, ok := strings.CutPrefix(name, "put/")
	if !ok || strings.Contains(base, "/") {
		return 0, fmt.Errorf("%q: uploads go to plain names", base)
	}
	switch {
	case base == s.want:
		if !s.wantTaken.CompareAndSwap(false, true) {
			return 0, fmt.Errorf("%s: already uploaded", base)
		}
		if s.mode == string(worker.ModeBootstrap) {
			return maxBootstrap, nil
		}
		return maxResult, nil
	case base == worker.ProgressFile:
		return maxProgress, nil
	case strings.HasPrefix(base, worker.LiveFilePrefix):
		return maxLiveChunk, nil
	case strings.HasPrefix(base, worker.ArtifactPrefix) && s.mode == string(worker.ModeBuild):
		return maxArtifact, nil
	}
	return 0, fmt.Errorf("%q: not a file the agent takes", excerptOf(base, 64))
}

// readOnce is the TFTP server's ReadOnce for s: the result key is served
// once.
func (s *session) readOnce(name string) bool { return name == "get/"+worker.KeyFile }

// newResultKey gives s a fresh result key: its result is taken only as
// worker.ResultName(key).
func (s *session) newResultKey() error {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return fmt.Errorf("result key: %w", err)
	}
	s.key = hex.EncodeToString(b)
	s.want = worker.ResultName(s.key)
	return nil
}

// writeKey writes s's result key into its get/ for the worker, readable
// by the agent alone on the host.
func (s *session) writeKey() error {
	if s.key == "" {
		return errors.New("no result key")
	}
	return os.WriteFile(filepath.Join(s.getDir(), worker.KeyFile), []byte(s.key+"\n"), 0o600)
}

// progress is a progress report of the worker, as the agent reads it.
type progress struct {
	pairs []manifest.Pair // without the version
}

// get returns the value of the pair name, or "".
func (p *progress) get(name string) string {
	for _, q := range p.pairs {
		if q.Name == name {
			return q.Value
		}
	}
	return ""
}

// readProgress reads the progress report at path, within the limits of a
// progress report.
func readProgress(path string) (*progress, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Size() > maxProgress {
		return nil, fmt.Errorf("%s: %d bytes, more than a progress report's %d", path, fi.Size(), maxProgress)
	}
	ms, err := progressLimits.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if ms.Len() != 1 {
		return nil, fmt.Errorf("%s: %d manifests, want one progress report", path, ms.Len())
	}
	return &progress{pairs: ms.Manifest(0)[1:]}, nil
}

// logArgs are p's pairs for a log record, each value a bounded excerpt.
func (p *progress) logArgs() []any {
	var args []any
	for _, q := range p.pairs {
		if q.Name != "sequence" {
			args = append(args, slog.String(excerptOf(q.Name, 64), excerptOf(q.Value, maxExcerpt)))
		}
	}
	return args
}

// excerptOf is s cut to at most n bytes, saying how many more there were.
// The log's handler escapes it (control characters, invalid UTF-8).
func excerptOf(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return fmt.Sprintf("%s... (%d bytes more)", s[:n], len(s)-n)
}

// progressLogRate bounds the progress reports of a session logged in a
// second: a step can upload as many as it likes.
const progressLogRate = 20

// logLimiter lets through at most progressLogRate records a second, and
// counts the others.
type logLimiter struct {
	mu      sync.Mutex
	start   time.Time
	n       int
	dropped int
}

// allow reports whether a record may be logged now, and how many were
// dropped in the last window when a new one starts (to be said once).
func (l *logLimiter) allow(now time.Time) (ok bool, dropped int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.start) >= time.Second {
		dropped = l.dropped
		l.start, l.n, l.dropped = now, 0, 0
	}
	if l.n >= progressLogRate {
		l.dropped++
		return false, dropped
	}
	l.n++
	return true, dropped
}
