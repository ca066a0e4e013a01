package hostos

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// The files a toolchain directory holds beside the toolchain's own.
const (
	VersionFile = "version" // the toolchain version, from the archive's name
	TrustFile   = "trust"   // toolchain_trust, or "no"
)

// MaxChecksums is the largest checksums file read.
const MaxChecksums = 1 << 20

// Toolchains keeps the toolchains of a host in Dir (<tftp>/toolchains):
//
//	<Dir>/<name> -> <name>-<id>      the current toolchain, switched atomically
//	<Dir>/<name>-<id>/               one download of it:
//	    FILE...                      each file of the checksums file, verified
//	    LINK -> FILE                 for each FILE whose name holds -VERSION,
//	                                 LINK is the name without it (the
//	                                 predictable name: build2-toolchain.tar.xz
//	                                 for build2-toolchain-0.17.0.tar.xz)
//	    version                      VERSION and a newline
//	    trust                        toolchain_trust, or "no", and a newline
//	<Dir>/<name>-<id>.new/           a download under way (kept to resume)
//
// <id> is derived from the checksums file and the trust, so a change to
// either is a new directory; names hold no '-', so no two toolchains'
// directories mix.
type Toolchains struct {
	Dir   string
	Fetch *Fetcher
	Log   *slog.Logger
}

// Installed is a toolchain in place.
type Installed struct {
	Name    string
	Dir     string // <Dir>/<name>: the stable path, a link to Real
	Real    string // <Dir>/<name>-<id>
	ID      string
	Version string
}

// Current returns the toolchain name in place, or an error wrapping
// os.ErrNotExist when there is none.
func (ts *Toolchains) Current(name string) (*Installed, error) {
	link := filepath.Join(ts.Dir, name)
	target, err := os.Readlink(link)
	if err != nil {
		return nil, fmt.Errorf("toolchain %s: %w", name, err)
	}
	v, err := os.ReadFile(filepath.Join(ts.Dir, target, VersionFile))
	if err != nil {
		return nil, fmt.Errorf("toolchain %s: %w", name, err)
	}
	return &Installed{Name: name, Dir: link, Real: filepath.Join(ts.Dir, target),
		ID: strings.TrimPrefix(target, name+"-"), Version: strings.TrimSpace(string(v))}, nil
}

// Check fetches t's checksums file and returns it with the id a
// toolchain made from it would have.
func (ts *Toolchains) Check(ctx context.Context, t *Toolchain) (*Checksums, string, error) {
	b, err := ts.Fetch.Get(ctx, t.URL, MaxChecksums)
	if err != nil {
		return nil, "", fmt.Errorf("toolchain %s: checksums file: %w", t.Name, err)
	}
	cs, err := ParseChecksums(t.URL, b)
	if err != nil {
		return nil, "", fmt.Errorf("toolchain %s: %w", t.Name, err)
	}
	if cs.Disabled {
		return cs, "", fmt.Errorf("toolchain %s (%s): %w", t.Name, t.URL, ErrDisabled)
	}
	h := sha256.New()
	h.Write(b)
	fmt.Fprintf(h, "\ntrust %s\n", trustOf(t))
	return cs, hex.EncodeToString(h.Sum(nil))[:16], nil
}

func trustOf(t *Toolchain) string {
	if t.Trust == "" {
		return "no"
	}
	return t.Trust
}

// Update brings toolchain t up to date with its checksums file and returns
// it and whether it changed. A disabled toolchain is an error wrapping
// ErrDisabled, and nothing changes. The files are downloaded (Prepare)
// into a new directory and verified, and only then does the toolchain's
// link switch to it and the older directories go; a file whose checksum
// does not match is an error and the toolchain in place stays.
func (ts *Toolchains) Update(ctx context.Context, t *Toolchain) (*Installed, bool, error) {
	id, err := ts.Prepare(ctx, t)
	if err != nil {
		return nil, false, err
	}
	if cur, err := ts.Current(t.Name); err == nil && cur.ID == id {
		return cur, false, nil
	}
	final := filepath.Join(ts.Dir, t.Name+"-"+id)
	// Switch the link atomically: a new link renamed over the old one.
	link := filepath.Join(ts.Dir, t.Name)
	tmp := link + "-" + id + ".link"
	os.Remove(tmp)
	if err := os.Symlink(filepath.Base(final), tmp); err != nil {
		return nil, false, fmt.Errorf("toolchain %s: %w", t.Name, err)
	}
	if err := os.Rename(tmp, link); err != nil {
		return nil, false, fmt.Errorf("toolchain %s: %w", t.Name, err)
	}
	ts.prune(t.Name, filepath.Base(final))
	cur, err := ts.Current(t.Name)
	if err != nil {
		return nil, false, err
	}
	ts.log().Info("toolchain in place", "toolchain", t.Name, "version", cur.Version, "dir", cur.Real)
	return cur, true, nil
}

func (ts *Toolchains) log() *slog.Logger {
	if ts.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return ts.Log
}

// download fills dir with the files of cs, verified, their links, and the
// version and trust files.
func (ts *Toolchains) download(ctx context.Context, t *Toolchain, cs *Checksums, dir string) error {
	for _, f := range cs.Files {
		dest := filepath.Join(dir, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
			return fmt.Errorf("toolchain %s: %w", t.Name, err)
		}
		if sum, err := fileSum(cs, dest); err == nil && sum == f.Sum {
			continue // downloaded before an interruption
		}
		u, err := Resolve(t.URL, f.Path)
		if err != nil {
			return fmt.Errorf("toolchain %s: %w", t.Name, err)
		}
		ts.log().Info("downloading", "toolchain", t.Name, "url", u)
		if err := ts.Fetch.Download(ctx, u, dest); err != nil {
			return fmt.Errorf("toolchain %s: %w", t.Name, err)
		}
		sum, err := fileSum(cs, dest)
		if err != nil {
			return fmt.Errorf("toolchain %s: %w", t.Name, err)
		}
		if sum != f.Sum {
			os.Remove(dest)
			return fmt.Errorf("toolchain %s: %s (%s): %s checksum mismatch: got %s, the checksums file says %s; the toolchain in place stays",
				t.Name, f.Path, u, cs.Algo, sum, f.Sum)
		}
	}
	listed := map[string]bool{}
	for _, f := range cs.Files {
		listed[f.Path] = true
	}
	for _, f := range cs.Files {
		base := path.Base(f.Path)
		short := strings.Replace(base, "-"+cs.Version, "", 1)
		lp := path.Join(path.Dir(f.Path), short)
		if short == base || listed[lp] || isReserved(lp) {
			continue
		}
		l := filepath.Join(dir, filepath.FromSlash(lp))
		os.Remove(l)
		if err := os.Symlink(base, l); err != nil {
			return fmt.Errorf("toolchain %s: %w", t.Name, err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, VersionFile), []byte(cs.Version+"\n"), 0o644); err != nil {
		return fmt.Errorf("toolchain %s: %w", t.Name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, TrustFile), []byte(trustOf(t)+"\n"), 0o644); err != nil {
		return fmt.Errorf("toolchain %s: %w", t.Name, err)
	}
	return nil
}

// Prepare downloads toolchain t, unless it is in place or downloaded
// already, without switching to it, and returns its id: a monitor
// prepares a new toolchain while the agents still build on the old one.
// The files go into <name>-<id>.new, where an interrupted download
// resumes, and are verified; a file whose checksum does not match is
// deleted (so that the next try downloads it afresh) and is an error.
func (ts *Toolchains) Prepare(ctx context.Context, t *Toolchain) (string, error) {
	cs, id, err := ts.Check(ctx, t)
	if err != nil {
		return "", err
	}
	final := filepath.Join(ts.Dir, t.Name+"-"+id)
	if _, err := os.Stat(final); err == nil {
		return id, nil
	}
	work := final + ".new"
	if err := ts.download(ctx, t, cs, work); err != nil {
		return "", err
	}
	if err := os.Rename(work, final); err != nil {
		return "", fmt.Errorf("toolchain %s: %w", t.Name, err)
	}
	return id, nil
}

// prune removes name's directories but keep (older downloads, and
// unfinished ones of other ids).
func (ts *Toolchains) prune(name, keep string) {
	es, err := os.ReadDir(ts.Dir)
	if err != nil {
		return
	}
	for _, e := range es {
		if n := e.Name(); strings.HasPrefix(n, name+"-") && n != keep {
			if err := os.RemoveAll(filepath.Join(ts.Dir, n)); err != nil {
				ts.log().Warn("removing an old toolchain", "dir", n, "err", err)
			}
		}
	}
}

func fileSum(cs *Checksums, p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := cs.NewHash()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
