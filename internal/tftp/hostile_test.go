package tftp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// rawClient speaks TFTP packet by packet, to play a broken or hostile
// client.
type rawClient struct {
	t    *testing.T
	conn *net.UDPConn
	buf  []byte
}

func newRawClient(t *testing.T) *rawClient {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawClient{t: t, conn: conn, buf: make([]byte, 70000)}
}

func (c *rawClient) send(to string, pkt []byte) {
	c.t.Helper()
	a, err := net.ResolveUDPAddr("udp4", to)
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.conn.WriteToUDP(pkt, a); err != nil {
		c.t.Fatal(err)
	}
}

// recv returns the next packet and its sender, or nil after wait.
func (c *rawClient) recv(wait time.Duration) (Packet, string) {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(wait))
	n, from, err := c.conn.ReadFromUDP(c.buf)
	if err != nil {
		return nil, ""
	}
	p, err := Decode(c.buf[:n])
	if err != nil {
		c.t.Fatalf("the server sent a malformed packet % x: %v", c.buf[:n], err)
	}
	return p, from.String()
}

func rrq(name string, opts ...string) []byte {
	var o []Option
	for i := 0; i+1 < len(opts); i += 2 {
		o = append(o, Option{opts[i], opts[i+1]})
	}
	return appendRequest(nil, OpRead, name, o)
}

// mustGet checks that the server still serves: it gets name and compares.
func mustGet(t *testing.T, addr, name string, want []byte) {
	t.Helper()
	var got bytes.Buffer
	if _, err := Get(ctxT(t), addr, name, &got, Options{BlockSize: 1468}); err != nil {
		t.Fatalf("the server stopped serving: %v", err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("the server served %d bytes, want %d", got.Len(), len(want))
	}
}

// snapshot lists every file beneath dir with its content.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			m[rel] = "-> " + l
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			m[rel] = string(b)
		default:
			m[rel] = fi.Mode().String()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func errCode(err error) (ErrorCode, bool) {
	var e *Error
	if errors.As(err, &e) {
		return e.Code, true
	}
	return 0, false
}

// TestEscapes tries every way out of the root, reading and writing, with
// and without rules: each must be refused, nothing outside read or
// written, and the server must go on serving.
func TestEscapes(t *testing.T) {
	top := t.TempDir()
	outside := filepath.Join(top, "outside")
	root := filepath.Join(top, "root")
	writeFile(t, filepath.Join(outside, "secret"), []byte("secret"))
	ok := []byte("fine")
	writeFile(t, filepath.Join(root, "ok"), ok)
	writeFile(t, filepath.Join(root, "get", "ok"), ok)
	if err := os.MkdirAll(filepath.Join(root, "put"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{
		"abs":        filepath.Join(outside, "secret"),
		"rel":        "../outside/secret",
		"dir":        outside,
		"get/up":     "../../outside",
		"loop":       "loop",
		"get/inside": "ok", // stays inside: allowed
	} {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	// The same traps where the bbot rules lead.
	for _, dir := range []string{"get", "put"} {
		for name, target := range map[string]string{
			"abs":  filepath.Join(outside, "secret"),
			"rel":  "../../outside/secret",
			"dir":  outside,
			"loop": "loop",
		} {
			if err := os.Symlink(target, filepath.Join(root, dir, name)); err != nil && !os.IsExist(err) {
				t.Fatal(err)
			}
		}
	}
	mustRule := func(s string) Rule {
		r, err := ParseRule(s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	servers := []struct {
		name  string
		s     *Server
		valid string // a name that reads "ok"
	}{
		{"plain", &Server{Root: root, AllowPut: true}, "ok"},
		{"identity rules", &Server{Root: root, Rules: []Rule{mustRule(`Gr ^(.*)$ \1`), mustRule(`Pr ^(.*)$ \1`)}}, "ok"},
		{"bbot rules", &Server{Root: root, Rules: []Rule{mustRule(`Gr ^/?(.+)$ /get/\1`), mustRule(`Pr ^/?(.+)$ /put/\1`)}}, "/ok"},
	}
	names := []string{
		"../outside/secret", "a/../../outside/secret", "./../outside/secret", "..", "../", "/..",
		"/etc/passwd", "//etc/passwd", "abs", "rel", "dir/secret", "dir/new", "get/up/secret", "up/secret",
		"../../outside/secret", "loop", ".", "/", "get/../../outside/secret",
	}
	before := snapshot(t, outside)
	for _, sv := range servers {
		addr := testServer(t, sv.s)
		for _, name := range names {
			for _, op := range []Op{OpRead, OpWrite} {
				t.Run(fmt.Sprintf("%s/%v/%s", sv.name, op, name), func(t *testing.T) {
					ctx := ctxT(t)
					var err error
					var got bytes.Buffer
					if op == OpRead {
						_, err = Get(ctx, addr, name, &got, Options{})
					} else {
						err = Put(ctx, addr, name, strings.NewReader("pwned"), 5, Options{})
					}
					code, isTFTP := errCode(err)
					if err == nil || !isTFTP || code != ErrAccess && code != ErrNotFound {
						t.Errorf("%v %q: err = %v, want access violation or file not found (got %q)", op, name, err, got.String())
					}
					if after := snapshot(t, outside); !maps(before, after) {
						t.Fatalf("outside the root changed: %v, was %v", after, before)
					}
					mustGet(t, addr, sv.valid, ok)
				})
			}
		}
	}
	// A symlink that stays inside is followed.
	mustGet(t, testServer(t, &Server{Root: root}), "get/inside", ok)
	// No stray files: only what the test made.
	for rel := range snapshot(t, root) {
		if strings.Contains(rel, ".tftp-") || strings.Contains(rel, "etc") || strings.Contains(rel, "new") {
			t.Errorf("the root holds %s after the escapes", rel)
		}
	}
}

func maps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestPutsThatFail checks that failed uploads leave no file, neither under
// their name nor as a temporary file, and that the server goes on.
func TestPutsThatFail(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "ok"), []byte("ok"))
	var mu sync.Mutex
	var requests []Request
	s := &Server{Root: root, AllowPut: true, MaxPutSize: 10_000, MaxTotalPut: 15_000,
		Timeout: 50 * time.Millisecond, Retries: 2,
		OnRequest: func(r Request) { mu.Lock(); requests = append(requests, r); mu.Unlock() }}
	addr := testServer(t, s)
	data := randomBytes(12_000, 3)

	tests := []struct {
		name     string
		put      func(t *testing.T) error
		wantCode ErrorCode // of the client's error; 0 for a client that vanished
	}{
		{"too big, told by tsize", func(t *testing.T) error {
			return Put(ctxT(t), addr, "big1", bytes.NewReader(data), int64(len(data)), Options{TransferSize: true})
		}, ErrDiskFull},
		{"too big, untold", func(t *testing.T) error {
			return Put(ctxT(t), addr, "big2", bytes.NewReader(data), -1, Options{BlockSize: 1000})
		}, ErrDiskFull},
		{"fits", func(t *testing.T) error {
			return Put(ctxT(t), addr, "fits", bytes.NewReader(data[:9000]), 9000, Options{})
		}, 0},
		{"beyond the server's total", func(t *testing.T) error {
			return Put(ctxT(t), addr, "total", bytes.NewReader(data[:9000]), -1, Options{})
		}, ErrDiskFull},
		{"client vanishes", func(t *testing.T) error {
			c := newRawClient(t)
			c.send(addr, appendRequest(nil, OpWrite, "vanish", nil))
			p, from := c.recv(2 * time.Second)
			if a, ok := p.(*Ack); !ok || a.Block != 0 {
				t.Fatalf("WRQ answered with %#v, want ACK 0", p)
			}
			d := append([]byte{0, opDATA, 0, 1}, data[:512]...)
			c.send(from, d)
			if p, _ := c.recv(2 * time.Second); p == nil {
				t.Fatal("no ACK 1")
			}
			return nil // and never another word
		}, 0},
		{"client aborts", func(t *testing.T) error {
			c := newRawClient(t)
			c.send(addr, appendRequest(nil, OpWrite, "abort", nil))
			_, from := c.recv(2 * time.Second)
			c.send(from, append([]byte{0, opDATA, 0, 1}, data[:512]...))
			c.recv(2 * time.Second)
			c.send(from, appendError(nil, ErrUndefined, "changed my mind"))
			return nil
		}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.put(t)
			code, _ := errCode(err)
			if tt.wantCode != 0 && (err == nil || code != tt.wantCode) || tt.wantCode == 0 && err != nil {
				t.Fatalf("Put: %v, want code %d (%v)", err, tt.wantCode, tt.wantCode)
			}
			mustGet(t, addr, "ok", []byte("ok"))
		})
	}
	// Wait for the vanished client's transfer to time out.
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(requests)
		mu.Unlock()
		if n >= 2*len(tests) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	entries, _ := os.ReadDir(root)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"fits", "ok"}; !slices.Equal(names, want) {
		t.Errorf("the root holds %q, want %q: failed uploads must leave nothing", names, want)
	}
	mu.Lock()
	defer mu.Unlock()
	failed := 0
	for _, r := range requests {
		if r.Err != nil && r.Op == OpWrite {
			failed++
		}
	}
	if failed != 5 {
		t.Errorf("OnRequest saw %d failed uploads, want 5: %v", failed, requests)
	}
}

// TestMalformed sends broken and absurd requests to the serving port; each
// gets the error it deserves, or none, and the server goes on.
func TestMalformed(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "ok"), []byte("ok"))
	if err := syscall.Mkfifo(filepath.Join(root, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := testServer(t, &Server{Root: root})
	long := strings.Repeat("x", 65000)
	tests := []struct {
		name string
		pkt  []byte
		want ErrorCode // -1: no answer
	}{
		{"empty", nil, 255},
		{"one byte", []byte{0}, 255},
		{"opcode only", []byte{0, 1}, ErrIllegal},
		{"no NUL", []byte("\x00\x01ok"), ErrIllegal},
		{"no mode", []byte("\x00\x01ok\x00"), ErrIllegal},
		{"empty name", []byte("\x00\x01\x00octet\x00"), ErrIllegal},
		{"unknown opcode", []byte("\x00\x09ok\x00octet\x00"), ErrIllegal},
		{"DATA to the serving port", []byte("\x00\x03\x00\x01hello"), ErrIllegal},
		{"ACK to the serving port", []byte("\x00\x04\x00\x01"), ErrIllegal},
		{"ERROR to the serving port", []byte("\x00\x05\x00\x01oops\x00"), 255},
		{"option without value", []byte("\x00\x01ok\x00octet\x00blksize\x00"), ErrIllegal},
		{"blksize 0", rrq("ok", "blksize", "0"), ErrOptionRefused},
		{"blksize 7", rrq("ok", "blksize", "7"), ErrOptionRefused},
		{"blksize 70000", rrq("ok", "blksize", "70000"), ErrOptionRefused},
		{"blksize abc", rrq("ok", "blksize", "abc"), ErrOptionRefused},
		{"blksize huge", rrq("ok", "blksize", "99999999999999999999999"), ErrOptionRefused},
		{"windowsize 0", rrq("ok", "windowsize", "0"), ErrOptionRefused},
		{"windowsize 65536", rrq("ok", "windowsize", "65536"), ErrOptionRefused},
		{"timeout 0", rrq("ok", "timeout", "0"), ErrOptionRefused},
		{"timeout 256", rrq("ok", "timeout", "256"), ErrOptionRefused},
		{"tsize -1", rrq("ok", "tsize", "-1"), ErrOptionRefused},
		{"netascii", []byte("\x00\x01ok\x00netascii\x00"), ErrUndefined},
		{"mail", []byte("\x00\x02ok\x00mail\x00"), ErrUndefined},
		{"long name", rrq(long), ErrAccess},
		{"missing file", rrq("missing"), ErrNotFound},
		{"a directory", rrq("."), ErrAccess},
		{"write refused", appendRequest(nil, OpWrite, "new", nil), ErrAccess},
		{"a FIFO, which must not hang the server", rrq("fifo"), ErrAccess},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newRawClient(t)
			c.send(addr, tt.pkt)
			p, _ := c.recv(500 * time.Millisecond)
			if tt.want == 255 {
				if p != nil {
					t.Errorf("answered %#v, want silence", p)
				}
			} else if e, ok := p.(*Error); !ok || e.Code != tt.want || e.Message == "" {
				t.Errorf("answered %#v, want error code %d (%v) with a message", p, tt.want, tt.want)
			}
			mustGet(t, addr, "ok", []byte("ok"))
		})
	}
}

// TestFlood sends a flood of requests while a real transfer runs; the
// server refuses what it cannot take and serves the rest.
func TestFlood(t *testing.T) {
	root := t.TempDir()
	data := randomBytes(300_000, 9)
	writeFile(t, filepath.Join(root, "ok"), data)
	addr := testServer(t, &Server{Root: root, MaxTransfers: 3, Timeout: 100 * time.Millisecond, Retries: 2})

	// Three transfers that hang (their clients never ACK) fill the server.
	for i := 0; i < 3; i++ {
		newRawClient(t).send(addr, rrq("ok"))
	}
	time.Sleep(50 * time.Millisecond)
	c := newRawClient(t)
	c.send(addr, rrq("ok"))
	if p, _ := c.recv(time.Second); p == nil || !strings.Contains(p.(*Error).Message, "busy") {
		t.Fatalf("a request beyond MaxTransfers got %#v, want a busy error", p)
	}
	// Hundreds of requests for missing files and garbage, from many ports.
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			a, _ := net.ResolveUDPAddr("udp4", addr)
			for j := 0; j < 100; j++ {
				conn.WriteTo(rrq(fmt.Sprintf("missing-%d", j)), a)
				conn.WriteTo([]byte{0, 7, 1, 2, 3}, a)
			}
		}()
	}
	wg.Wait()
	// Once the hung transfers gave up, the real one goes through.
	time.Sleep(500 * time.Millisecond)
	var got bytes.Buffer
	if _, err := Get(ctxT(t), addr, "ok", &got, Options{BlockSize: 1468, WindowSize: 8}); err != nil {
		t.Fatalf("after the flood: %v", err)
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("after the flood: got %d bytes, want %d", got.Len(), len(data))
	}
}

// TestNoSorcerersApprentice ACKs every DATA twice: the server must still
// send each block once.
func TestNoSorcerersApprentice(t *testing.T) {
	root := t.TempDir()
	const blocks = 40
	writeFile(t, filepath.Join(root, "f"), randomBytes(512*blocks+100, 1))
	addr := testServer(t, &Server{Root: root})
	c := newRawClient(t)
	c.send(addr, rrq("f"))
	seen := map[uint16]int{}
	for {
		p, from := c.recv(500 * time.Millisecond)
		if p == nil {
			break
		}
		d, ok := p.(*Data)
		if !ok {
			t.Fatalf("got %#v, want DATA", p)
		}
		seen[d.Block]++
		ack := appendAck(nil, d.Block)
		c.send(from, ack)
		c.send(from, ack)
	}
	if len(seen) != blocks+1 {
		t.Errorf("got %d distinct blocks, want %d", len(seen), blocks+1)
	}
	for b, n := range seen {
		if n != 1 {
			t.Errorf("block %d sent %d times, want once", b, n)
		}
	}
}

// lossyConn drops and duplicates packets of a transfer socket, by count,
// so that the test is reproducible.
type lossyConn struct {
	net.PacketConn
	mu            sync.Mutex
	reads, writes int
}

func (c *lossyConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		n, a, err := c.PacketConn.ReadFrom(b)
		if err != nil {
			return n, a, err
		}
		c.mu.Lock()
		c.reads++
		drop := c.reads%5 == 0
		c.mu.Unlock()
		if !drop {
			return n, a, err
		}
	}
}

func (c *lossyConn) WriteTo(b []byte, a net.Addr) (int, error) {
	c.mu.Lock()
	c.writes++
	w := c.writes
	c.mu.Unlock()
	if w%7 == 0 {
		return len(b), nil
	}
	if w%11 == 0 {
		c.PacketConn.WriteTo(b, a)
	}
	return c.PacketConn.WriteTo(b, a)
}

// TestLossyLink transfers through a transfer socket that loses and
// duplicates packets both ways: retransmission must recover.
func TestLossyLink(t *testing.T) {
	root := t.TempDir()
	data := randomBytes(50_000, 5)
	writeFile(t, filepath.Join(root, "f"), data)
	s := &Server{Root: root, AllowPut: true, Timeout: 30 * time.Millisecond, Retries: 20}
	s.ListenTransfer = func() (net.PacketConn, error) {
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		return &lossyConn{PacketConn: c}, err
	}
	addr := testServer(t, s)
	for _, opt := range []Options{{}, {BlockSize: 1000, WindowSize: 8, TransferSize: true}} {
		opt.Timeout = 30 * time.Millisecond
		opt.Retries = 20
		t.Run(fmt.Sprintf("%+v", opt), func(t *testing.T) {
			var got bytes.Buffer
			if _, err := Get(ctxT(t), addr, "f", &got, opt); err != nil {
				t.Fatalf("Get: %v", err)
			}
			if !bytes.Equal(got.Bytes(), data) {
				t.Fatalf("Get: %d bytes, differing from the %d served", got.Len(), len(data))
			}
			if err := Put(ctxT(t), addr, "back", bytes.NewReader(data), int64(len(data)), opt); err != nil {
				t.Fatalf("Put: %v", err)
			}
			back, _ := os.ReadFile(filepath.Join(root, "back"))
			if !bytes.Equal(back, data) {
				t.Fatalf("Put: the server has %d bytes, differing from the %d sent", len(back), len(data))
			}
		})
	}
}

func TestServeIdle(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "f"), randomBytes(4000, 2))
	listen := func(t *testing.T) net.PacketConn {
		conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	const idle = 300 * time.Millisecond

	t.Run("nothing", func(t *testing.T) {
		start := time.Now()
		served, err := (&Server{Root: root}).ServeIdle(context.Background(), listen(t), idle)
		if served || err != nil || time.Since(start) < idle {
			t.Errorf("ServeIdle = %v, %v after %v, want false, nil after %v", served, err, time.Since(start), idle)
		}
	})
	t.Run("a request, and a slow transfer", func(t *testing.T) {
		conn := listen(t)
		addr := conn.LocalAddr().String()
		go func() {
			time.Sleep(100 * time.Millisecond)
			// A lock-step reader that takes 8 x 100ms, longer than idle.
			c := newRawClient(t)
			c.send(addr, rrq("f"))
			for {
				p, from := c.recv(time.Second)
				d, ok := p.(*Data)
				if !ok {
					return
				}
				time.Sleep(100 * time.Millisecond)
				c.send(from, appendAck(nil, d.Block))
				if len(d.Payload) < 512 {
					return
				}
			}
		}()
		var got []Request
		s := &Server{Root: root, OnRequest: func(r Request) { got = append(got, r) }}
		start := time.Now()
		served, err := s.ServeIdle(context.Background(), conn, idle)
		took := time.Since(start)
		if !served || err != nil {
			t.Fatalf("ServeIdle = %v, %v, want true, nil", served, err)
		}
		if len(got) != 1 || got[0].Err != nil || got[0].Bytes != 4000 {
			t.Fatalf("ServeIdle returned before the transfer ended: %+v", got)
		}
		if took < 100*time.Millisecond+800*time.Millisecond+idle {
			t.Errorf("ServeIdle returned after %v, before idle passed after the transfer", took)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(50*time.Millisecond, cancel)
		start := time.Now()
		_, err := (&Server{Root: root}).ServeIdle(ctx, listen(t), time.Hour)
		if !errors.Is(err, context.Canceled) || time.Since(start) > time.Second {
			t.Errorf("ServeIdle = %v after %v, want context.Canceled at once", err, time.Since(start))
		}
	})
}

// TestBadOACK checks that the client refuses an OACK with what it did not
// ask for, telling the server with ERROR 8.
func TestBadOACK(t *testing.T) {
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	got := make(chan []byte, 1)
	go func() {
		buf := make([]byte, 1000)
		_, from, err := conn.ReadFrom(buf)
		if err != nil {
			return
		}
		conn.WriteTo(appendOACK(nil, []Option{{"blksize", "9000"}}), from)
		n, _, _ := conn.ReadFrom(buf)
		got <- buf[:n]
	}()
	_, err = Get(ctxT(t), conn.LocalAddr().String(), "f", &bytes.Buffer{}, Options{BlockSize: 1468})
	if !errors.Is(err, errOACK) {
		t.Errorf("Get with an OACK of a larger blksize: %v, want the OACK refused", err)
	}
	if pkt := <-got; binary.BigEndian.Uint16(pkt) != opERROR || binary.BigEndian.Uint16(pkt[2:]) != uint16(ErrOptionRefused) {
		t.Errorf("the client answered % x, want ERROR 8", pkt)
	}
}

// TestDiskFull uploads into a tiny tmpfs: the client learns the disk is
// full and nothing partial is left.
func TestDiskFull(t *testing.T) {
	testenv.NeedVM(t)
	testenv.NeedRoot(t)
	root := t.TempDir()
	ctx := ctxT(t)
	if err := proc.Run(ctx, nil, "mount", "-t", "tmpfs", "-o", "size=64k", "buildfarm-tftp-test", root); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := proc.Run(context.Background(), nil, "umount", root); err != nil {
			t.Error(err)
		}
	})
	addr := testServer(t, &Server{Root: root, AllowPut: true})
	for _, opt := range []Options{{}, {BlockSize: 65464, WindowSize: 4}} {
		err := Put(ctx, addr, "big", bytes.NewReader(randomBytes(1<<20, 4)), 1<<20, opt)
		if code, _ := errCode(err); code != ErrDiskFull {
			t.Errorf("Put of 1 MiB into 64 KiB with %+v: %v, want disk full", opt, err)
		}
		if entries, _ := os.ReadDir(root); len(entries) != 0 {
			t.Errorf("after the failed upload, the root holds %v, want nothing", entries)
		}
	}
	// Space is back: a small upload goes through.
	if err := Put(ctx, addr, "small", strings.NewReader("small"), 5, Options{}); err != nil {
		t.Errorf("after the full disk: %v", err)
	}
}

// TestStalledPeers: 64 peers (as many as the server's transfers) request a
// file with every option that costs the server (large blocks and window, a
// 255 s timeout) and never answer. A real client that comes half a second
// later must be served at once, the server's heap must not grow with the
// stalled peers, and each stalled transfer must end within the stall
// timeout whatever timeout its peer asked for.
func TestStalledPeers(t *testing.T) {
	root := t.TempDir()
	data := randomBytes(1<<20, 11)
	writeFile(t, filepath.Join(root, "f"), data)
	var mu sync.Mutex
	var stalled []Request
	addr := testServer(t, &Server{Root: root, OnRequest: func(r Request) {
		if r.Err != nil && strings.Contains(r.Err.Error(), "sent nothing") {
			mu.Lock()
			stalled = append(stalled, r)
			mu.Unlock()
		}
	}})
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse
	}
	before := heap()
	const peers = 64
	for range peers {
		newRawClient(t).send(addr, rrq("f", "blksize", "65464", "windowsize", "64", "timeout", "255", "tsize", "0"))
	}
	time.Sleep(StallEvict + 100*time.Millisecond)
	grown := int64(heap()) - int64(before)
	t.Logf("heap with %d stalled peers: %+d KiB", peers, grown>>10)
	if grown > 16<<20 {
		t.Errorf("the heap grew by %d MiB with %d stalled peers, want less than 16 MiB", grown>>20, peers)
	}

	start := time.Now()
	var got bytes.Buffer
	if _, err := Get(ctxT(t), addr, "f", &got, Options{BlockSize: 1468, WindowSize: 8}); err != nil {
		t.Fatalf("with %d stalled peers, Get = %v, want it served", peers, err)
	}
	took := time.Since(start)
	t.Logf("with %d stalled peers, a real client got 1 MiB in %v", peers, took)
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("with %d stalled peers, got %d bytes, want %d", peers, got.Len(), len(data))
	}
	if took > 2*time.Second {
		t.Errorf("with %d stalled peers, a real client took %v, want it served at once", peers, took)
	}

	// Every stalled transfer ends by the stall timeout (and one gave its
	// slot to the real client).
	deadline := time.Now().Add(DefaultStallTimeout + 3*time.Second)
	for {
		mu.Lock()
		n := len(stalled)
		mu.Unlock()
		if n == peers {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d stalled transfers ended by %v", n, peers, DefaultStallTimeout+3*time.Second)
		}
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, r := range stalled {
		if r.Duration > DefaultStallTimeout+time.Second {
			t.Errorf("a stalled transfer took %v, want at most %v: %v", r.Duration, DefaultStallTimeout, r.Err)
		}
	}
}
