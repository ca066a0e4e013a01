package tftp

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// testServer serves s on a loopback port until the test ends and returns
// its address.
func testServer(t testing.TB, s *Server) string {
	t.Helper()
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, conn) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		conn.Close()
	})
	return conn.LocalAddr().String()
}

// randomBytes returns n reproducible pseudo-random bytes.
func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

func writeFile(t testing.TB, name string, data []byte) {
	t.Helper()
	if err := writeFileErr(name, data); err != nil {
		t.Fatal(err)
	}
}

func writeFileErr(name string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return err
	}
	return os.WriteFile(name, data, 0o644)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestRoundTrip(t *testing.T) {
	root := t.TempDir()
	addr := testServer(t, &Server{Root: root, AllowPut: true})
	sizes := []int{0, 1, 511, 512, 513, 1468 * 16, 100_000}
	opts := []Options{
		{},
		{TransferSize: true},
		{BlockSize: 1468},
		{BlockSize: 65464, TransferSize: true},
		{BlockSize: 1468, WindowSize: 16},
		{BlockSize: 8, WindowSize: 7, TransferSize: true},
		{BlockSize: 512, WindowSize: 64, Timeout: 2 * time.Second},
	}
	for i, opt := range opts {
		for _, size := range sizes {
			t.Run(fmt.Sprintf("%+v/%d", opt, size), func(t *testing.T) {
				ctx := ctxT(t)
				data := randomBytes(size, uint64(size+i))
				name := fmt.Sprintf("f-%d-%d", i, size)
				if err := Put(ctx, addr, name, bytes.NewReader(data), int64(size), opt); err != nil {
					t.Fatalf("Put: %v", err)
				}
				onDisk, err := os.ReadFile(filepath.Join(root, name))
				if err != nil || !bytes.Equal(onDisk, data) {
					t.Fatalf("after Put, the server has %d bytes (%v), want %d equal bytes", len(onDisk), err, size)
				}
				var got bytes.Buffer
				n, err := Get(ctx, addr, name, &got, opt)
				if err != nil {
					t.Fatalf("Get: %v", err)
				}
				if n != int64(size) || !bytes.Equal(got.Bytes(), data) {
					t.Fatalf("Get = %d bytes, want %d equal bytes", n, size)
				}
			})
		}
	}
}

// TestRollover moves more than 65535 blocks, so block numbers wrap.
func TestRollover(t *testing.T) {
	root := t.TempDir()
	data := randomBytes(8*70_000+3, 7)
	writeFile(t, filepath.Join(root, "big"), data)
	addr := testServer(t, &Server{Root: root, AllowPut: true})
	for _, opt := range []Options{{BlockSize: 8}, {BlockSize: 8, WindowSize: 32}} {
		t.Run(fmt.Sprintf("%+v", opt), func(t *testing.T) {
			ctx := ctxT(t)
			var got bytes.Buffer
			if _, err := Get(ctx, addr, "big", &got, opt); err != nil {
				t.Fatalf("Get: %v", err)
			}
			if !bytes.Equal(got.Bytes(), data) {
				t.Fatalf("Get: %d bytes differ from the %d sent", got.Len(), len(data))
			}
			if err := Put(ctx, addr, "big-back", bytes.NewReader(data), -1, opt); err != nil {
				t.Fatalf("Put: %v", err)
			}
			back, _ := os.ReadFile(filepath.Join(root, "big-back"))
			if !bytes.Equal(back, data) {
				t.Fatalf("Put: the server has %d bytes, differing from the %d sent", len(back), len(data))
			}
		})
	}
}

// TestIPv6 runs a transfer each way over ::1, windowed and not.
func TestIPv6(t *testing.T) {
	conn, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	root := t.TempDir()
	data := randomBytes(50_000, 6)
	writeFile(t, filepath.Join(root, "f"), data)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&Server{Root: root, AllowPut: true}).Serve(ctx, conn) }()
	defer func() {
		cancel()
		<-done
		conn.Close()
	}()
	addr := conn.LocalAddr().String()
	for _, opt := range []Options{{}, {BlockSize: 1468, WindowSize: 16, TransferSize: true}} {
		var got bytes.Buffer
		if _, err := Get(ctxT(t), addr, "f", &got, opt); err != nil || !bytes.Equal(got.Bytes(), data) {
			t.Fatalf("Get over %s with %+v: %d bytes, %v", addr, opt, got.Len(), err)
		}
		if err := Put(ctxT(t), addr, "back", bytes.NewReader(data), int64(len(data)), opt); err != nil {
			t.Fatalf("Put over %s with %+v: %v", addr, opt, err)
		}
		if back, _ := os.ReadFile(filepath.Join(root, "back")); !bytes.Equal(back, data) {
			t.Fatalf("Put over %s with %+v: the server has %d bytes", addr, opt, len(back))
		}
	}
}

// TestConcurrent runs many transfers at once, each way, windowed and not.
func TestConcurrent(t *testing.T) {
	root := t.TempDir()
	data := randomBytes(300_000, 8)
	writeFile(t, filepath.Join(root, "f"), data)
	addr := testServer(t, &Server{Root: root, AllowPut: true})
	errs := make(chan error, 32)
	for i := range 16 {
		go func() {
			opt := Options{BlockSize: 1468, WindowSize: 1 + i%4*8}
			var got bytes.Buffer
			if _, err := Get(ctxT(t), addr, "f", &got, opt); err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(got.Bytes(), data) {
				errs <- fmt.Errorf("Get %d: %d bytes differ", i, got.Len())
				return
			}
			name := fmt.Sprintf("up-%d", i)
			if err := Put(ctxT(t), addr, name, bytes.NewReader(data), -1, opt); err != nil {
				errs <- err
				return
			}
			if back, _ := os.ReadFile(filepath.Join(root, name)); !bytes.Equal(back, data) {
				errs <- fmt.Errorf("Put %d: %d bytes differ", i, len(back))
				return
			}
			errs <- nil
		}()
	}
	for range 16 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
