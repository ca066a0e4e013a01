package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for a command writing to it while the
// test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startTFTPServe runs `buildfarm tftp serve ARGS --listen 127.0.0.1:0` until
// the test ends and returns its address and log.
func startTFTPServe(t *testing.T, args ...string) (string, *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var log syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"tftp", "serve", "--listen", "127.0.0.1:0"}, args...), strings.NewReader(""), &log, &log)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("tftp serve ended with %v; log:\n%s", err, log.String())
		}
	})
	listen := regexp.MustCompile(`listen=(127\.0\.0\.1:\d+)`)
	for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(10 * time.Millisecond) {
		if m := listen.FindStringSubmatch(log.String()); m != nil {
			return m[1], &log
		}
		select {
		case err := <-done:
			t.Fatalf("tftp serve ended with %v; log:\n%s", err, log.String())
		default:
		}
	}
	t.Fatalf("tftp serve did not say where it listens; log:\n%s", log.String())
	return "", nil
}

func TestTFTPCommands(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"get", "put"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data := bytes.Repeat([]byte("buildfarm tftp\n"), 10_000)
	if err := os.WriteFile(filepath.Join(root, "get", "task"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	addr, log := startTFTPServe(t, "--root", root, "--rule", `Gr ^/?(.+)$ get/\1`, "--rule", `Pr ^/?(.+)$ put/\1`, "--max-put-size", "1000000")
	local := t.TempDir()
	ctx := context.Background()

	tests := []struct {
		name     string
		args     []string
		wantCode int
		check    func(t *testing.T, stdout, stderr string)
	}{
		{name: "get", args: []string{"get", addr, "/task", filepath.Join(local, "task")}, check: func(t *testing.T, _, _ string) {
			got, err := os.ReadFile(filepath.Join(local, "task"))
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("got %d bytes (%v), want %d", len(got), err, len(data))
			}
		}},
		{name: "get windowed", args: []string{"get", addr, "task", "-", "--blksize", "1468", "--windowsize", "16", "--timeout", "2s"}, check: func(t *testing.T, stdout, _ string) {
			if stdout != string(data) {
				t.Errorf("stdout has %d bytes, want %d", len(stdout), len(data))
			}
		}},
		{name: "put", args: []string{"put", addr, filepath.Join(local, "task"), "result", "--blksize", "65464"}, check: func(t *testing.T, _, _ string) {
			got, err := os.ReadFile(filepath.Join(root, "put", "result"))
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("server got %d bytes (%v), want %d", len(got), err, len(data))
			}
		}},
		{name: "get missing", args: []string{"get", addr, "nothing", filepath.Join(local, "nothing")}, wantCode: 1, check: func(t *testing.T, _, stderr string) {
			if !strings.Contains(stderr, `no file "nothing" on the server`) {
				t.Errorf("stderr = %q, want it to say the file is missing", stderr)
			}
			if _, err := os.Stat(filepath.Join(local, "nothing")); err == nil {
				t.Errorf("a failed get left its local file")
			}
		}},
		{name: "put too big", args: []string{"put", addr, "-", "big"}, wantCode: 1, check: func(t *testing.T, _, stderr string) {
			if !strings.Contains(stderr, "disk full or allocation exceeded") {
				t.Errorf("stderr = %q, want the limit named", stderr)
			}
		}},
		{name: "help", args: []string{"get", "--help"}, check: func(t *testing.T, stdout, _ string) {
			if !strings.Contains(stdout, "buildfarm tftp get 127.0.0.1:69") {
				t.Errorf("help has no example:\n%s", stdout)
			}
		}},
		{name: "bad blksize", args: []string{"get", addr, "task", "-", "--blksize", "7"}, wantCode: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			stdin := strings.NewReader(strings.Repeat("x", 2_000_000))
			code := exitCode(run(ctx, append([]string{"tftp"}, tt.args...), stdin, &stdout, &stderr))
			if code != tt.wantCode {
				t.Fatalf("buildfarm tftp %v: exit %d, want %d; stderr:\n%s", tt.args, code, tt.wantCode, stderr.String())
			}
			if tt.check != nil {
				tt.check(t, stdout.String(), stderr.String())
			}
		})
	}
	if !strings.Contains(log.String(), "request.file=/task request.resolved=get/task") {
		t.Errorf("the server's log does not show the request:\n%s", log)
	}
	entries, _ := os.ReadDir(filepath.Join(root, "put"))
	if len(entries) != 1 {
		t.Errorf("put/ holds %d entries, want only the one upload (no partial file)", len(entries))
	}
}

func TestTFTPServeErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no root", []string{"tftp", "serve", "--listen", "127.0.0.1:0"}, "--root and --listen are required"},
		{"bad rule", []string{"tftp", "serve", "--root", ".", "--listen", "127.0.0.1:0", "--rule", "Xr a b"}, "unknown flag"},
		{"root missing", []string{"tftp", "serve", "--root", "/nonexistent", "--listen", "127.0.0.1:0"}, "not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := exitCode(run(context.Background(), tt.args, strings.NewReader(""), &stdout, &stderr))
			if code != 1 || !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("buildfarm %v: exit %d, stderr %q; want 1 and %q", tt.args, code, stderr.String(), tt.want)
			}
		})
	}
}
