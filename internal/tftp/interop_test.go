package tftp

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// The interoperability tests run the real TFTP peers that Debian packages:
// the clients of tftp-hpa, atftp and busybox against our server, and our
// client against tftpd-hpa.

// peerClient runs one client program for one transfer.
type peerClient struct {
	name    string
	program string
	blksize []int // the block sizes it can ask for; 0 asks for none
	tsize   bool  // whether it asks for tsize
	window  bool  // whether it asks for windowsize 16
	args    func(op Op, host, port, remote, local string, blksize int) []string
}

var peerClients = []peerClient{
	{name: "tftp-hpa", program: "tftp", blksize: []int{0}, args: func(op Op, host, port, remote, local string, _ int) []string {
		if op == OpWrite {
			return []string{"-m", "binary", host, port, "-c", "put", local, remote}
		}
		return []string{"-m", "binary", host, port, "-c", "get", remote, local}
	}},
	{name: "atftp", program: "atftp", blksize: []int{0, 1468, 65464}, tsize: true, args: func(op Op, host, port, remote, local string, blksize int) []string {
		args := []string{"--option", "tsize 0"}
		if blksize != 0 {
			args = append(args, "--option", fmt.Sprintf("blksize %d", blksize))
		}
		flag := "-g"
		if op == OpWrite {
			flag = "-p"
		}
		return append(args, flag, "-r", remote, "-l", local, host, port)
	}},
	{name: "atftp-windowsize", program: "atftp", blksize: []int{1468, 65464}, tsize: true, window: true, args: func(op Op, host, port, remote, local string, blksize int) []string {
		flag := "-g"
		if op == OpWrite {
			flag = "-p"
		}
		return []string{"--option", "tsize 0", "--option", fmt.Sprintf("blksize %d", blksize), "--option", "windowsize 16", flag, "-r", remote, "-l", local, host, port}
	}},
	{name: "busybox", program: "busybox", blksize: []int{512, 1468, 65464}, args: func(op Op, host, port, remote, local string, blksize int) []string {
		flag := "-g"
		if op == OpWrite {
			flag = "-p"
		}
		return []string{"tftp", flag, "-r", remote, "-l", local, "-b", strconv.Itoa(blksize), host, port}
	}},
}

// recorder keeps the requests a server saw.
type recorder struct {
	mu   sync.Mutex
	reqs []Request
}

func (r *recorder) add(q Request) {
	r.mu.Lock()
	r.reqs = append(r.reqs, q)
	r.mu.Unlock()
}

// find returns the last request for filename, waiting a little for it:
// the server records a request once the client has got its last packet.
func (r *recorder) find(filename string) (Request, bool) {
	for start := time.Now(); time.Since(start) < 2*time.Second; time.Sleep(5 * time.Millisecond) {
		r.mu.Lock()
		for i := len(r.reqs) - 1; i >= 0; i-- {
			if r.reqs[i].Filename == filename {
				defer r.mu.Unlock()
				return r.reqs[i], true
			}
		}
		r.mu.Unlock()
	}
	return Request{}, false
}

func TestInteropClients(t *testing.T) {
	testenv.NeedVM(t)
	root := t.TempDir()
	local := t.TempDir()
	rec := &recorder{}
	addr := testServer(t, &Server{Root: root, AllowPut: true, OnRequest: rec.add})
	host, port, _ := net.SplitHostPort(addr)
	data := randomBytes(200_000+17, 11)
	writeFile(t, filepath.Join(local, "upload"), data)

	for _, c := range peerClients {
		path := testenv.NeedProgram(t, c.program)
		for _, blksize := range c.blksize {
			for _, op := range []Op{OpRead, OpWrite} {
				t.Run(fmt.Sprintf("%s/%v/blksize=%d", c.name, op, blksize), func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					remote, localFile := fmt.Sprintf("served-%s-%d", c.name, blksize), filepath.Join(local, fmt.Sprintf("%s-%d", c.name, blksize))
					writeFile(t, filepath.Join(root, remote), data)
					if op == OpWrite {
						remote, localFile = fmt.Sprintf("up-%s-%d", c.name, blksize), filepath.Join(local, "upload")
					}
					out, err := proc.Output(ctx, path, c.args(op, host, port, remote, localFile, blksize)...)
					if err != nil {
						t.Fatalf("%s: %v\n%s", c.name, err, out)
					}
					check := localFile
					if op == OpWrite {
						check = filepath.Join(root, remote)
					}
					got, err := os.ReadFile(check)
					if err != nil || !bytes.Equal(got, data) {
						t.Fatalf("%s %v: %s has %d bytes (%v), want the %d sent; output:\n%s", c.name, op, check, len(got), err, len(data), out)
					}
					r, ok := rec.find(remote)
					if !ok || r.Err != nil {
						t.Fatalf("the server recorded %+v", r)
					}
					if want := strconv.Itoa(blksize); blksize != 0 && blksize != 512 && r.Options["blksize"] != want {
						t.Errorf("the client asked for blksize %q, want %s", r.Options["blksize"], want)
					}
					if c.window && r.Options["windowsize"] != "16" {
						t.Errorf("the client did not ask for windowsize 16: %v", r.Options)
					}
					if _, ok := r.Options["tsize"]; c.tsize && !ok {
						t.Errorf("the client did not ask for tsize: %v", r.Options)
					}
				})
			}
		}
	}
}

// tftpdHPA runs in.tftpd on a free loopback port until the test ends and
// returns its address.
func tftpdHPA(t *testing.T, root string) string {
	t.Helper()
	path := testenv.NeedProgram(t, "in.tftpd")
	// A port that was free a moment ago.
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().String()
	c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := proc.Command(ctx, path, "-L", "-a", addr, "-s", "-c", "-p", "-u", "root", root)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	// Ready when it answers.
	writeFile(t, filepath.Join(root, ".ready"), []byte("ready"))
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		_, err := Get(context.Background(), addr, ".ready", &bytes.Buffer{}, Options{Timeout: 100 * time.Millisecond, Retries: 1})
		if err == nil {
			return addr
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("in.tftpd at %s does not answer: %v; stderr: %s", addr, err, stderr.String())
		}
	}
}

func TestInteropTFTPDHPA(t *testing.T) {
	testenv.NeedVM(t)
	root := t.TempDir()
	addr := tftpdHPA(t, root)
	data := randomBytes(300_000+5, 12)
	writeFile(t, filepath.Join(root, "served"), data)
	for _, opt := range []Options{
		{},
		{TransferSize: true},
		{BlockSize: 1468, TransferSize: true},
		{BlockSize: 65464, Timeout: 2 * time.Second},
		{BlockSize: 1468, WindowSize: 16}, // tftpd-hpa ignores windowsize: lock-step
		{WindowSize: 4, TransferSize: true},
	} {
		t.Run(fmt.Sprintf("%+v", opt), func(t *testing.T) {
			ctx := ctxT(t)
			var got bytes.Buffer
			n, err := Get(ctx, addr, "served", &got, opt)
			if err != nil || n != int64(len(data)) || !bytes.Equal(got.Bytes(), data) {
				t.Fatalf("Get = %d bytes, %v; want the %d served", n, err, len(data))
			}
			name := fmt.Sprintf("up-%d-%d-%v", opt.BlockSize, opt.WindowSize, opt.TransferSize)
			if err := Put(ctx, addr, name, bytes.NewReader(data), int64(len(data)), opt); err != nil {
				t.Fatalf("Put: %v", err)
			}
			back, err := os.ReadFile(filepath.Join(root, name))
			if err != nil || !bytes.Equal(back, data) {
				t.Fatalf("Put: tftpd-hpa has %d bytes (%v), want the %d sent", len(back), err, len(data))
			}
		})
	}
	t.Run("missing", func(t *testing.T) {
		_, err := Get(ctxT(t), addr, "missing", &bytes.Buffer{}, Options{})
		if code, ok := errCode(err); !ok || code != ErrNotFound {
			t.Errorf("Get of a missing file: %v, want file not found", err)
		}
	})
}

// TestInteropRollover moves more than 65535 blocks (small ones) with real
// peers, so that block numbers wrap as each of them expects.
func TestInteropRollover(t *testing.T) {
	testenv.NeedVM(t)
	data := randomBytes(64*66_000+3, 13)
	t.Run("busybox from ours", func(t *testing.T) {
		bb := testenv.NeedProgram(t, "busybox")
		root, local := t.TempDir(), t.TempDir()
		writeFile(t, filepath.Join(root, "big"), data)
		host, port, _ := net.SplitHostPort(testServer(t, &Server{Root: root}))
		out, err := proc.Output(ctxT(t), bb, "tftp", "-g", "-r", "big", "-l", filepath.Join(local, "big"), "-b", "64", host, port)
		if err != nil {
			t.Fatalf("busybox: %v\n%s", err, out)
		}
		if got, _ := os.ReadFile(filepath.Join(local, "big")); !bytes.Equal(got, data) {
			t.Fatalf("busybox got %d bytes, different from the %d served", len(got), len(data))
		}
	})
	t.Run("ours from tftpd-hpa", func(t *testing.T) {
		root := t.TempDir()
		writeFile(t, filepath.Join(root, "big"), data)
		addr := tftpdHPA(t, root)
		var got bytes.Buffer
		if _, err := Get(ctxT(t), addr, "big", &got, Options{BlockSize: 64, TransferSize: true}); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), data) {
			t.Fatalf("got %d bytes, different from the %d served", got.Len(), len(data))
		}
	})
}
