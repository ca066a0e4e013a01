package tftp

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
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

// TestDedicatedShortTimeout: a Dedicated client whose timeout is short
// (the worker's start requests use 10 ms) against a server that never
// answers gives up after its retries. Its socket's kernel timeout was
// once left unset below 10 ms, and the read then blocked for ever.
func TestDedicatedShortTimeout(t *testing.T) {
	silent, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	for _, timeout := range []time.Duration{500 * time.Nanosecond, time.Millisecond, 10 * time.Millisecond} {
		done := make(chan error, 1)
		go func() {
			_, err := Get(t.Context(), silent.LocalAddr().String(), "start", io.Discard,
				Options{Dedicated: true, Timeout: timeout, Retries: 3})
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil {
				t.Errorf("Get with timeout %v from a silent server = nil, want an error", timeout)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("Get with timeout %v and 3 retries from a silent server still waits after 10 s", timeout)
		}
	}
}

// TestDallyLeavesThePFree: a Dedicated Get returns while its socket
// dallies in a goroutine of its own (RFC 1350). That goroutine must wait
// in Go's network poller: when its read held the P, as the transfer's own
// reads do, every other goroutine of a process with one P (the worker in
// its one-vCPU guest) waited for the runtime's preemption signal, 10-20
// ms at a time, for as long as the dally lasted, and the guest idled
// through half of a task.
func TestDallyLeavesThePFree(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	root := t.TempDir()
	if err := writeFileErr(filepath.Join(root, "f"), []byte("dally\n")); err != nil {
		t.Fatal(err)
	}
	addr := testServer(t, &Server{Root: root})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for range 3 {
		if _, err := Get(ctx, addr, "f", io.Discard, Options{Dedicated: true, Timeout: 2 * time.Second}); err != nil {
			t.Fatal(err)
		}
	}
	// The dallying goroutines run whenever this one waits: a hand-over
	// to another goroutine and back, 200 times, takes microseconds each
	// unless one of them holds the P.
	ping, pong := make(chan struct{}), make(chan struct{})
	go func() {
		for range ping {
			pong <- struct{}{}
		}
	}()
	defer close(ping)
	var slow int
	var worst time.Duration
	for range 200 {
		t0 := time.Now()
		ping <- struct{}{}
		<-pong
		time.Sleep(100 * time.Microsecond) // a timer too, as the worker's waits
		d := time.Since(t0)
		worst = max(worst, d)
		if d > 5*time.Millisecond {
			slow++
		}
	}
	if slow > 10 {
		t.Errorf("%d of 200 hand-overs took over 5 ms (the worst %v): a dallying goroutine holds the P", slow, worst)
	}
}
