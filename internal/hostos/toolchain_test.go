package hostos

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/buildfarm/buildfarm/internal/tftp"
)

// upstream is a toolchain's upstream: a directory of files and a checksums
// file, served over HTTP (and TFTP, and as files).
type upstream struct {
	dir string
	srv *httptest.Server

	mu     sync.Mutex
	ranges []string // Range headers seen
	cut    string   // a file whose next GET is cut off halfway
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{dir: t.TempDir()}
	files := http.FileServer(http.Dir(u.dir))
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		if rg := r.Header.Get("Range"); rg != "" {
			u.ranges = append(u.ranges, rg)
		}
		cut := u.cut != "" && strings.HasSuffix(r.URL.Path, "/"+u.cut)
		if cut {
			u.cut = ""
		}
		u.mu.Unlock()
		if cut {
			b, _ := os.ReadFile(filepath.Join(u.dir, r.URL.Path))
			w.Header().Set("Content-Length", fmt.Sprint(len(b)))
			w.Write(b[:len(b)/2])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

// publish writes files and a checksums file name listing them (the
// first as the archive), with the sums of sums where given.
func (u *upstream) publish(t *testing.T, name string, files [][2]string, sums map[string]string) string {
	var cs strings.Builder
	cs.WriteString("# the toolchain\n\n")
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(u.dir, f[0]), []byte(f[1]), 0o644); err != nil {
			t.Fatal(err)
		}
		var sum string
		if strings.HasSuffix(name, ".sha512") {
			s := sha512.Sum512([]byte(f[1]))
			sum = hex.EncodeToString(s[:])
		} else {
			s := sha256.Sum256([]byte(f[1]))
			sum = hex.EncodeToString(s[:])
		}
		if s, ok := sums[f[0]]; ok {
			sum = s
		}
		fmt.Fprintf(&cs, "%s *%s\n", sum, f[0])
	}
	if err := os.WriteFile(filepath.Join(u.dir, name), []byte(cs.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return u.srv.URL + "/" + name
}

var v017 = [][2]string{
	{"build2-toolchain-0.17.0.tar.xz", "the toolchain 0.17.0"},
	{"build2-baseutils-0.17.0-x86_64-windows.zip", "baseutils"},
	{"build2-mingw-0.17.0-x86_64-windows.tar.xz", "mingw"},
	{"README", "read me"},
}

// tree lists dir: each file with its content, each link with its target.
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case d.Type()&os.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			m[rel] = "-> " + l
		case d.IsDir():
			m[rel+"/"] = ""
			return filepath.SkipDir
		default:
			b, _ := os.ReadFile(p)
			m[rel] = string(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestToolchainDirectory: the directory holds exactly the files of the
// checksums file, the predictable-name links, version and trust.
func TestToolchainDirectory(t *testing.T) {
	up := newUpstream(t)
	url := up.publish(t, "toolchain.sha256", v017, nil)
	ts := &Toolchains{Dir: t.TempDir(), Fetch: &Fetcher{}}
	tc := &Toolchain{Name: "default", URL: url}
	cur, changed, err := ts.Update(context.Background(), tc)
	if err != nil {
		t.Fatal(err)
	}
	if !changed || cur.Version != "0.17.0" {
		t.Errorf("Update = %+v, changed %v; want version 0.17.0, changed", cur, changed)
	}
	want := map[string]string{
		"build2-toolchain-0.17.0.tar.xz":             "the toolchain 0.17.0",
		"build2-baseutils-0.17.0-x86_64-windows.zip": "baseutils",
		"build2-mingw-0.17.0-x86_64-windows.tar.xz":  "mingw",
		"README":                              "read me",
		"build2-toolchain.tar.xz":             "-> build2-toolchain-0.17.0.tar.xz",
		"build2-baseutils-x86_64-windows.zip": "-> build2-baseutils-0.17.0-x86_64-windows.zip",
		"build2-mingw-x86_64-windows.tar.xz":  "-> build2-mingw-0.17.0-x86_64-windows.tar.xz",
		"version":                             "0.17.0\n",
		"trust":                               "no\n",
	}
	if diff := cmp.Diff(want, tree(t, cur.Dir+"/")); diff != "" {
		t.Errorf("toolchain directory (-want +got):\n%s", diff)
	}
	top := tree(t, ts.Dir)
	if diff := cmp.Diff(map[string]string{"default": "-> default-" + cur.ID, "default-" + cur.ID + "/": ""}, top); diff != "" {
		t.Errorf("toolchains directory (-want +got):\n%s", diff)
	}
	// Unchanged upstream: nothing to do. A trust given: a new directory.
	if _, changed, err := ts.Update(context.Background(), tc); err != nil || changed {
		t.Errorf("second Update: changed %v, err %v; want unchanged", changed, err)
	}
	tc.Trust = "AB:CD"
	cur2, changed, err := ts.Update(context.Background(), tc)
	if err != nil || !changed {
		t.Fatalf("Update with a trust: changed %v, err %v", changed, err)
	}
	if b, _ := os.ReadFile(filepath.Join(cur2.Dir, TrustFile)); string(b) != "AB:CD\n" {
		t.Errorf("trust = %q, want AB:CD", b)
	}
	if _, err := os.Stat(cur.Real); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the old directory %s is still there (%v)", cur.Real, err)
	}
}

// TestToolchainDisabled: a disabled toolchain is ErrDisabled and leaves
// nothing behind.
func TestToolchainDisabled(t *testing.T) {
	up := newUpstream(t)
	os.WriteFile(filepath.Join(up.dir, "t.sha512"), []byte("# off for now\n\ndisabled\nnot a line\n"), 0o644)
	ts := &Toolchains{Dir: t.TempDir(), Fetch: &Fetcher{}}
	_, _, err := ts.Update(context.Background(), &Toolchain{Name: "x", URL: up.srv.URL + "/t.sha512"})
	if !errors.Is(err, ErrDisabled) {
		t.Fatalf("Update of a disabled toolchain: err = %v, want ErrDisabled", err)
	}
	if m := tree(t, ts.Dir); len(m) != 0 {
		t.Errorf("a disabled toolchain left %v", m)
	}
}

// TestToolchainBadChecksum: a file whose checksum is wrong is an error
// naming it, and the toolchain in place stays as it was.
func TestToolchainBadChecksum(t *testing.T) {
	up := newUpstream(t)
	ts := &Toolchains{Dir: t.TempDir(), Fetch: &Fetcher{}}
	tc := &Toolchain{Name: "default", URL: up.publish(t, "toolchain.sha512", v017, nil)}
	old, _, err := ts.Update(context.Background(), tc)
	if err != nil {
		t.Fatal(err)
	}
	before := tree(t, old.Dir+"/")
	v018 := [][2]string{{"build2-toolchain-0.18.0.tar.xz", "the toolchain 0.18.0"}, {"extra-0.18.0.zip", "extra"}}
	up.publish(t, "toolchain.sha512", v018, map[string]string{"extra-0.18.0.zip": strings.Repeat("0", 128)})
	_, _, err = ts.Update(context.Background(), tc)
	if err == nil || !strings.Contains(err.Error(), "extra-0.18.0.zip") || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Fatalf("Update with a bad checksum: err = %v, want a checksum mismatch naming extra-0.18.0.zip", err)
	}
	cur, err := ts.Current("default")
	if err != nil || cur.ID != old.ID || cur.Version != "0.17.0" {
		t.Fatalf("after the failure: %+v, %v; want the old toolchain", cur, err)
	}
	if diff := cmp.Diff(before, tree(t, cur.Dir+"/")); diff != "" {
		t.Errorf("the toolchain in place changed (-before +after):\n%s", diff)
	}
}

// TestToolchainResume: a download cut off halfway resumes with a Range
// request where it stopped.
func TestToolchainResume(t *testing.T) {
	up := newUpstream(t)
	big := strings.Repeat("0123456789abcdef", 64<<10) // 1 MiB
	files := [][2]string{{"tc-1.2.3.tar.gz", big}}
	tc := &Toolchain{Name: "default", URL: up.publish(t, "toolchain.sha256", files, nil)}
	ts := &Toolchains{Dir: t.TempDir(), Fetch: &Fetcher{}}
	up.cut = "tc-1.2.3.tar.gz"
	if _, _, err := ts.Update(context.Background(), tc); err == nil {
		t.Fatal("Update with a download cut off: no error")
	}
	parts, _ := filepath.Glob(filepath.Join(ts.Dir, "*", "*.part"))
	if len(parts) != 1 {
		t.Fatalf("part files: %v, want one", parts)
	}
	st, _ := os.Stat(parts[0])
	var progress bytes.Buffer
	ts.Fetch.Progress = &progress
	cur, _, err := ts.Update(context.Background(), tc)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("bytes=%d-", st.Size()); st.Size() == 0 || len(up.ranges) != 1 || up.ranges[0] != want {
		t.Errorf("Range requests %q, want one %q", up.ranges, want)
	}
	if b, _ := os.ReadFile(filepath.Join(cur.Dir, "tc.tar.gz")); string(b) != big {
		t.Errorf("the resumed file is not the upstream's (%d bytes)", len(b))
	}
	if !strings.Contains(progress.String(), "tc-1.2.3.tar.gz:") || !strings.Contains(progress.String(), "1.0 MiB (100%)") {
		t.Errorf("progress: %q", progress.String())
	}
}

// TestToolchainFileAndTFTP: file and tftp URLs (our TFTP server).
func TestToolchainFileAndTFTP(t *testing.T) {
	up := newUpstream(t)
	up.publish(t, "toolchain.sha256", v017[:2], nil)
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); (&tftp.Server{Root: up.dir}).Serve(ctx, conn) }()
	defer func() { cancel(); conn.Close(); <-done }()
	for _, url := range []string{"file://" + up.dir + "/toolchain.sha256", "tftp://" + conn.LocalAddr().String() + "/toolchain.sha256"} {
		ts := &Toolchains{Dir: t.TempDir(), Fetch: &Fetcher{TFTP: tftp.Options{Timeout: time.Second}}}
		cur, _, err := ts.Update(ctx, &Toolchain{Name: "t", URL: url})
		if err != nil {
			t.Fatalf("%s: %v", url, err)
		}
		got := tree(t, cur.Dir+"/")
		names := make([]string, 0, len(got))
		for n := range got {
			names = append(names, n)
		}
		sort.Strings(names)
		want := []string{"build2-baseutils-0.17.0-x86_64-windows.zip", "build2-baseutils-x86_64-windows.zip", "build2-toolchain-0.17.0.tar.xz", "build2-toolchain.tar.xz", "trust", "version"}
		if diff := cmp.Diff(want, names); diff != "" {
			t.Errorf("%s: (-want +got):\n%s", url, diff)
		}
	}
}

func TestParseChecksums(t *testing.T) {
	sum := strings.Repeat("a", 64)
	for _, tc := range []struct{ name, in, err string }{
		{"t.sha1", sum + " *a-1.tar", "neither in .sha256"},
		{"t.sha256", sum + " a-1.tar", "is not \"SUM *PATH\""},
		{"t.sha256", "abc *a-1.tar", "not a sha256 checksum"},
		{"t.sha256", sum + " *../a-1.tar", "only plain names"},
		{"t.sha256", sum + " */a-1.tar", "not a relative path"},
		{"t.sha256", sum + " *noversion.tar.xz", "no version"},
		{"t.sha256", sum + " *a-1.exe", "not an archive"},
		{"t.sha256", sum + " *a-1.tar\n" + sum + " *a-1.tar", "listed twice"},
		{"t.sha256", sum + " *a-1.tar\n" + sum + " *version", "keeps for itself"},
		{"t.sha256", "# nothing\n", "lists no files"},
	} {
		_, err := ParseChecksums(tc.name, []byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("ParseChecksums(%q) = %v, want an error with %q", tc.in, err, tc.err)
		}
	}
	c, err := ParseChecksums("x/t.sha256", []byte(sum+"  b2-0.18.0-a.0.20251107.c2.tar.gz\n"+strings.ToUpper(sum)+" *sub/f\n"))
	if err != nil || c.Version != "0.18.0-a.0.20251107.c2" || c.Files[1].Path != "sub/f" || c.Files[1].Sum != sum {
		t.Errorf("ParseChecksums = %+v, %v", c, err)
	}
}

func FuzzParseChecksums(f *testing.F) {
	f.Add("t.sha256", strings.Repeat("a", 64)+" *a-1.tar\n# x\n\n")
	f.Add("t.sha512", "disabled\n")
	f.Fuzz(func(t *testing.T, name, in string) {
		c, err := ParseChecksums(name, []byte(in))
		if err != nil || c.Disabled {
			return
		}
		if c.Version == "" || len(c.Files) == 0 {
			t.Errorf("ParseChecksums(%q, %q) = %+v", name, in, c)
		}
		for _, fl := range c.Files {
			if _, err := Resolve("http://h/d/t.sha256", fl.Path); err != nil {
				t.Errorf("ParseChecksums(%q) accepted path %q: %v", in, fl.Path, err)
			}
		}
	})
}
