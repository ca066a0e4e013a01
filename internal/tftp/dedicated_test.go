package tftp

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestDedicatedClient runs Get and Put with a Dedicated client (the
// worker's: its socket's descriptor in blocking mode, connected, GSO and
// GRO for windows) against the server (package net), lock-step at the
// worker's block size and with a window, into a file (the raw writer) and
// into a buffer, and checks every byte.
func TestDedicatedClient(t *testing.T) {
	root := t.TempDir()
	const size = 3<<20 + 12345
	data := randomBytes(size, 3)
	if err := writeFileErr(filepath.Join(root, "f"), data); err != nil {
		t.Fatal(err)
	}
	addr := testServer(t, &Server{Root: root, AllowPut: true})
	for _, opt := range []Options{
		{BlockSize: 65464, Dedicated: true},
		{BlockSize: 1468, WindowSize: 16, Dedicated: true},
		{BlockSize: 512, Dedicated: true, TransferSize: true},
	} {
		t.Run(fmt.Sprintf("blksize=%d/windowsize=%d", opt.BlockSize, opt.WindowSize), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var buf bytes.Buffer
			if n, err := Get(ctx, addr, "f", &buf, opt); err != nil || n != size || !bytes.Equal(buf.Bytes(), data) {
				t.Fatalf("Get into a buffer = %d, %v; equal %v, want %d bytes equal", n, err, bytes.Equal(buf.Bytes(), data), size)
			}
			local := filepath.Join(t.TempDir(), "f")
			f, err := os.Create(local)
			if err != nil {
				t.Fatal(err)
			}
			n, err := Get(ctx, addr, "f", f, opt)
			f.Close()
			got, _ := os.ReadFile(local)
			if err != nil || n != size || !bytes.Equal(got, data) {
				t.Fatalf("Get into a file = %d, %v; equal %v, want %d bytes equal", n, err, bytes.Equal(got, data), size)
			}
			name := fmt.Sprintf("up-%d-%d", opt.BlockSize, opt.WindowSize)
			if err := Put(ctx, addr, name, bytes.NewReader(data), size, opt); err != nil {
				t.Fatalf("Put: %v", err)
			}
			if got, err := os.ReadFile(filepath.Join(root, name)); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("uploaded %s: %v; equal %v", name, err, bytes.Equal(got, data))
			}
		})
	}
}
