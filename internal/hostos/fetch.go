package hostos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/buildfarm/buildfarm/internal/tftp"
)

// Fetcher downloads the host OS's files (checksums files, toolchain files,
// buildos-buildid) from http, https, tftp and file URLs.
type Fetcher struct {
	HTTP *http.Client // nil: one with a 30 s time limit to the response headers
	TFTP tftp.Options // for tftp URLs
	// Progress, when not nil, gets a progress line (rewritten in place
	// with \r) while a file downloads: give a terminal, or nil.
	Progress io.Writer
}

func (f *Fetcher) client() *http.Client {
	if f.HTTP != nil {
		return f.HTTP
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.ResponseHeaderTimeout = 30 * time.Second
	return &http.Client{Transport: t}
}

// Resolve returns rel resolved against base, the URL of the file that names
// it (a checksums file names its files relative to itself). rel may not
// be absolute nor climb out of base's directory.
func Resolve(base, rel string) (string, error) {
	if rel == "" || strings.HasPrefix(rel, "/") || strings.Contains(rel, "\\") || strings.Contains(rel, "://") {
		return "", fmt.Errorf("%q is not a relative path", rel)
	}
	for _, part := range strings.Split(rel, "/") {
		if part == ".." || part == "." || part == "" {
			return "", fmt.Errorf("%q: only plain names joined with '/' are allowed", rel)
		}
	}
	u, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("%q: %w", base, err)
	}
	u.Path = path.Join(path.Dir(u.Path), rel)
	u.RawPath = ""
	u.RawQuery, u.Fragment = "", ""
	return u.String(), nil
}

// Get returns the whole of the file at rawURL, at most max bytes.
func (f *Fetcher) Get(ctx context.Context, rawURL string, max int64) ([]byte, error) {
	var b bytes.Buffer
	w := &limitWriter{w: &b, n: max}
	if err := f.copy(ctx, rawURL, w, 0, nil, nil); err != nil {
		if w.over {
			return nil, fmt.Errorf("%s: larger than %d bytes", rawURL, max)
		}
		return nil, err
	}
	return b.Bytes(), nil
}

// Download writes the file at rawURL to dest. It downloads into dest.part
// first and renames it when complete; an HTTP download that finds a
// dest.part from an earlier, interrupted one resumes it (a Range request),
// starting over when the server does not do ranges.
func (f *Fetcher) Download(ctx context.Context, rawURL, dest string) error {
	part := dest + ".part"
	off := int64(0)
	if st, err := os.Stat(part); err == nil {
		off = st.Size()
	}
	out, err := os.OpenFile(part, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("download %s: %w", rawURL, err)
	}
	defer out.Close()
	var p *progress
	if f.Progress != nil {
		p = &progress{w: f.Progress, name: path.Base(dest)}
	}
	restart := func() error {
		off = 0
		if err := out.Truncate(0); err != nil {
			return err
		}
		_, err := out.Seek(0, io.SeekStart)
		return err
	}
	if _, err := out.Seek(off, io.SeekStart); err != nil {
		return fmt.Errorf("download %s: %w", rawURL, err)
	}
	err = f.copy(ctx, rawURL, out, off, restart, p)
	if p != nil {
		p.done(err)
	}
	if err != nil {
		return err
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("download %s: %w", rawURL, err)
	}
	return os.Rename(part, dest)
}

// copy writes the file at rawURL to w. With off > 0 it asks for the bytes
// from off on, and calls restart first when it gets the whole file
// instead. p (may be nil) is told the sizes.
func (f *Fetcher) copy(ctx context.Context, rawURL string, w io.Writer, off int64, restart func() error, prog *progress) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return fmt.Errorf("%q: %w", rawURL, err)
	}
	if prog != nil {
		w = io.MultiWriter(w, prog)
	}
	switch u.Scheme {
	case "http", "https":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
		if err != nil {
			return err
		}
		if off > 0 {
			req.Header.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-")
		}
		resp, err := f.client().Do(req)
		if err != nil {
			return fmt.Errorf("download %s: %w", rawURL, err)
		}
		defer resp.Body.Close()
		switch {
		case off > 0 && resp.StatusCode == http.StatusPartialContent:
		case off > 0 && resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
			// The part is complete (or the file shrank: the
			// checksum tells).
			return nil
		case resp.StatusCode == http.StatusOK:
			if off > 0 {
				if err := restart(); err != nil {
					return fmt.Errorf("download %s: %w", rawURL, err)
				}
				off = 0
			}
		default:
			return fmt.Errorf("download %s: %s", rawURL, resp.Status)
		}
		if prog != nil {
			prog.start(off, off+resp.ContentLength)
		}
		if _, err := io.Copy(w, resp.Body); err != nil {
			return fmt.Errorf("download %s: %w", rawURL, err)
		}
		return nil
	case "tftp":
		if off > 0 {
			if err := restart(); err != nil {
				return err
			}
		}
		host := u.Host
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), "69")
		}
		if prog != nil {
			prog.start(0, -1)
		}
		// As curl does, the first '/' separates the host from the path.
		_, err := tftp.Get(ctx, host, strings.TrimPrefix(u.Path, "/"), w, f.TFTP)
		return err
	case "file":
		if off > 0 {
			if err := restart(); err != nil {
				return err
			}
		}
		in, err := os.Open(u.Path)
		if err != nil {
			return fmt.Errorf("download %s: %w", rawURL, err)
		}
		defer in.Close()
		if prog != nil {
			if st, err := in.Stat(); err == nil {
				prog.start(0, st.Size())
			}
		}
		if _, err := io.Copy(w, in); err != nil {
			return fmt.Errorf("download %s: %w", rawURL, err)
		}
		return nil
	}
	return fmt.Errorf("%s: scheme %q is not http, https, tftp or file", rawURL, u.Scheme)
}

type limitWriter struct {
	w    io.Writer
	n    int64
	over bool
}

var errTooLarge = errors.New("too large")

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.n {
		l.over = true
		return 0, errTooLarge
	}
	l.n -= int64(len(p))
	return l.w.Write(p)
}

// progress writes "NAME: 12.3 of 45.6 MiB (27%)" lines, rewritten in place,
// at most every 200 ms.
type progress struct {
	w          io.Writer
	name       string
	have, size int64
	last       time.Time
}

func (p *progress) start(have, size int64) { p.have, p.size = have, size }

func (p *progress) Write(b []byte) (int, error) {
	p.have += int64(len(b))
	if time.Since(p.last) >= 200*time.Millisecond {
		p.last = time.Now()
		p.print()
	}
	return len(b), nil
}

func (p *progress) print() {
	const mib = 1 << 20
	if p.size > 0 {
		fmt.Fprintf(p.w, "\r%s: %.1f of %.1f MiB (%d%%)  ", p.name, float64(p.have)/mib, float64(p.size)/mib, p.have*100/p.size)
	} else {
		fmt.Fprintf(p.w, "\r%s: %.1f MiB  ", p.name, float64(p.have)/mib)
	}
}

func (p *progress) done(err error) {
	p.print()
	if err != nil {
		fmt.Fprintf(p.w, "failed\n")
		return
	}
	fmt.Fprintf(p.w, "done\n")
}
