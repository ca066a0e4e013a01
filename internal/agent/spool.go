package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/buildfarm/buildfarm/internal/ctlclient"
	"github.com/buildfarm/buildfarm/internal/manifest"
)

// A spool keeps the results that are not delivered yet, so that none is
// lost to a failed upload or a restart: one file a result in the spool
// directory (--spool, by default <tftp>/spool/<instance>), named
// <unix-nanoseconds>-<random>.result so that older ones go first. A file is
// a manifest stream: a header with the result URL, then the result request
// (session, signed challenge, result). It is written atomically (a
// temporary file, synced, then renamed), and deleted once the controller
// acknowledged the result (2xx) or refused it for good (see
// ctlclient.Permanent). A file a slot is uploading is busy: the deliverer
// leaves it alone meanwhile.
type spool struct {
	dir  string
	log  *slog.Logger
	wake chan struct{} // a failed upload was left in the spool

	mu   sync.Mutex
	busy map[string]bool
}

// spooled is one result in the spool.
type spooled struct {
	path string
	url  string
	req  *manifest.ResultRequest
}

const (
	spoolSuffix   = ".result"
	resultURLName = "result-url"
)

// openSpool makes the spool directory if needed and deletes the temporary
// files a crash left.
func openSpool(dir string, log *slog.Logger) (*spool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	tmps, _ := filepath.Glob(filepath.Join(dir, ".tmp-*"))
	for _, t := range tmps {
		os.Remove(t)
	}
	return &spool{dir: dir, log: log, wake: make(chan struct{}, 1), busy: map[string]bool{}}, nil
}

// add writes a result request for url into the spool, busy.
func (s *spool) add(url string, rr *manifest.ResultRequest) (*spooled, error) {
	var b bytes.Buffer
	hdr := manifest.Manifest{{Name: "", Value: "1"}, {Name: resultURLName, Value: url}}
	if err := manifest.Serialize(&b, append([]manifest.Manifest{hdr}, rr.Manifests()...)); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	var rnd [4]byte
	rand.Read(rnd[:])
	name := fmt.Sprintf("%020d-%s%s", time.Now().UnixNano(), hex.EncodeToString(rnd[:]), spoolSuffix)
	e := &spooled{path: filepath.Join(s.dir, name), url: url, req: rr}
	if err := writeFileAtomic(e.path, b.Bytes()); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	s.mu.Lock()
	s.busy[e.path] = true
	s.mu.Unlock()
	return e, nil
}

// take returns the results in the spool that nobody is uploading, oldest
// first, and marks them busy. A file that cannot be read is renamed to
// NAME.bad and left for an operator.
func (s *spool) take() []*spooled {
	paths, err := filepath.Glob(filepath.Join(s.dir, "*"+spoolSuffix))
	if err != nil {
		s.log.Error("reading the spool", "dir", s.dir, "err", err)
		return nil
	}
	slices.Sort(paths)
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*spooled
	for _, p := range paths {
		if s.busy[p] {
			continue
		}
		e, err := readSpooled(p)
		if err != nil {
			s.log.Error("unreadable spooled result; renamed, not delivered", "file", p+".bad", "err", err)
			os.Rename(p, p+".bad")
			continue
		}
		s.busy[p] = true
		out = append(out, e)
	}
	return out
}

// done ends an upload of e: finished deletes its file; otherwise it stays
// for a later try.
func (s *spool) done(e *spooled, finished bool) {
	if finished {
		if err := os.Remove(e.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Error("deleting a delivered result from the spool", "file", e.path, "err", err)
		}
	}
	s.mu.Lock()
	delete(s.busy, e.path)
	s.mu.Unlock()
	if !finished {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// empty reports whether the spool holds no result.
func (s *spool) empty() bool {
	paths, _ := filepath.Glob(filepath.Join(s.dir, "*"+spoolSuffix))
	return len(paths) == 0
}

func readSpooled(path string) (*spooled, error) {
	ms, err := manifest.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if ms.Len() < 2 {
		return nil, fmt.Errorf("%s: %d manifests, want a header and a result request", path, ms.Len())
	}
	e := &spooled{path: path}
	for _, p := range ms.Manifest(0) {
		if p.Name == resultURLName {
			e.url = p.Value
		}
	}
	if e.url == "" {
		return nil, fmt.Errorf("%s: no %s in the header", path, resultURLName)
	}
	if e.req, err = manifest.ParseResultRequest(ms.Manifests()[1:], path, manifest.Lenient); err != nil {
		return nil, err
	}
	return e, nil
}

// writeFileAtomic writes data to path through a synced temporary file in
// the same directory, renamed into place, and syncs the directory.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// report spools the result request rr for url and uploads it; a failed
// upload leaves it in the spool for deliverSpool.
func (a *Agent) report(ctx context.Context, sp *spool, url string, rr *manifest.ResultRequest) {
	e, err := sp.add(url, rr)
	if err != nil {
		a.log.Error("result not spooled; uploading it once", "err", err)
		e = &spooled{url: url, req: rr}
		a.deliver(ctx, e)
		return
	}
	sp.done(e, a.deliver(ctx, e))
}

// deliver uploads e and reports whether it is finished with: acknowledged,
// or refused for good (then logged as an error: the result is lost).
func (a *Agent) deliver(ctx context.Context, e *spooled) bool {
	err := a.client.PostResult(ctx, e.url, e.req)
	args := []any{"url", e.url, "session", e.req.Session, "name", e.req.Result.Name, "version", e.req.Result.Version}
	switch {
	case err == nil:
		a.log.Info("result delivered", args...)
		return true
	case ctlclient.Permanent(err):
		a.log.Error("result dropped: the controller refused it, and sending it again cannot change that", append(args, "err", err)...)
		return true
	case ctx.Err() != nil:
		return false
	}
	a.log.Warn("result upload failed; it stays spooled and is tried again", append(args, "err", err, "spool", e.path)...)
	return false
}

// deliverAll tries each result in the spool once and reports whether all
// of them are finished with.
func (a *Agent) deliverAll(ctx context.Context, sp *spool) bool {
	all := true
	for _, e := range sp.take() {
		ok := ctx.Err() == nil && a.deliver(ctx, e)
		sp.done(e, ok)
		all = all && ok
	}
	return all
}

// deliverSpool delivers the spool's results, with back-off while uploads
// fail, until ctx ends, or, once drain is closed, until the spool is empty.
func (a *Agent) deliverSpool(ctx context.Context, sp *spool, drain <-chan struct{}) {
	b := newBackoff(a.opts.RequestInterval)
	for {
		if sp.empty() {
			select {
			case <-ctx.Done():
				return
			case <-drain:
				return
			case <-sp.wake:
				continue
			}
		}
		sleep(ctx, b.Next())
		if ctx.Err() != nil {
			return
		}
		if a.deliverAll(ctx, sp) {
			b.Reset()
		}
	}
}
