package tftp

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPutLimit checks the per-file caps: a file is cut at its own limit
// whether or not the client tells its size, a name PutLimit refuses gets
// its error, and the server-wide MaxPutSize still bounds every file.
func TestPutLimit(t *testing.T) {
	root := t.TempDir()
	s := &Server{Root: root, AllowPut: true, MaxPutSize: 5000,
		PutLimit: func(name string) (int64, error) {
			switch {
			case name == "small":
				return 1000, nil
			case name == "large":
				return 1 << 20, nil // more than MaxPutSize
			case strings.HasPrefix(name, "no"):
				return 0, errors.New("uploads named no* are not accepted here")
			}
			return 0, nil
		}}
	addr := testServer(t, s)
	data := randomBytes(3000, 7)
	for _, tt := range []struct {
		name     string
		size     int
		told     bool
		wantCode ErrorCode
		wantMsg  string
	}{
		{"small", 1000, true, 0, ""},
		{"small", 1001, true, ErrDiskFull, "1000 bytes"},
		{"small", 1001, false, ErrDiskFull, "1000 bytes"},
		{"large", 3000, false, 0, ""},
		{"other", 3000, false, 0, ""},
		{"nope", 10, false, ErrAccess, "not accepted here"},
	} {
		os.Remove(filepath.Join(root, tt.name))
		err := Put(ctxT(t), addr, tt.name, bytes.NewReader(data[:tt.size]), int64(tt.size), Options{TransferSize: tt.told, BlockSize: 512})
		var e *Error
		switch {
		case tt.wantCode == 0 && err != nil:
			t.Errorf("Put(%s, %d bytes) = %v, want success", tt.name, tt.size, err)
		case tt.wantCode != 0 && (!errors.As(err, &e) || e.Code != tt.wantCode || !strings.Contains(e.Message, tt.wantMsg)):
			t.Errorf("Put(%s, %d bytes, tsize %v) = %v, want error %d naming %q", tt.name, tt.size, tt.told, err, tt.wantCode, tt.wantMsg)
		}
		b, rerr := os.ReadFile(filepath.Join(root, tt.name))
		if tt.wantCode == 0 && !bytes.Equal(b, data[:tt.size]) {
			t.Errorf("%s: file of %d bytes (%v), want %d", tt.name, len(b), rerr, tt.size)
		}
		if tt.wantCode != 0 && rerr == nil {
			t.Errorf("%s: a refused upload left a file", tt.name)
		}
	}
	big := randomBytes(6000, 8)
	if err := Put(ctxT(t), addr, "large", bytes.NewReader(big), -1, Options{}); err == nil {
		t.Error("an upload beyond MaxPutSize was accepted under a larger PutLimit")
	}
}

// TestReadOnce checks that a file ReadOnce names is served once: the first
// reader gets it, the file is gone, and the next reader is told so.
func TestReadOnce(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "secret"), []byte("s3cret"))
	writeFile(t, filepath.Join(root, "open"), []byte("open"))
	s := &Server{Root: root, ReadOnce: func(name string) bool { return name == "secret" }}
	addr := testServer(t, s)
	for i := range 2 {
		var b bytes.Buffer
		if _, err := Get(ctxT(t), addr, "open", &b, Options{}); err != nil || b.String() != "open" {
			t.Errorf("Get(open) #%d = %q, %v", i, b.String(), err)
		}
	}
	var b bytes.Buffer
	if _, err := Get(ctxT(t), addr, "secret", &b, Options{}); err != nil || b.String() != "s3cret" {
		t.Fatalf("first Get(secret) = %q, %v", b.String(), err)
	}
	if _, err := os.Stat(filepath.Join(root, "secret")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after its first read, the file is still there: %v", err)
	}
	b.Reset()
	_, err := Get(ctxT(t), addr, "secret", &b, Options{})
	var e *Error
	if !errors.As(err, &e) || e.Code != ErrNotFound || b.Len() != 0 {
		t.Errorf("second Get(secret) = %q, %v; want not found", b.String(), err)
	}
}
