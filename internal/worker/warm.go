package worker

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/buildfarm/buildfarm/internal/archive"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/tftp"
)

// StartFile is what a worker started with buildfarm.start=wait asks for
// before its task: the point a warm start saves the guest at. The agent
// that builds a warm image never serves it; the agent that restores one
// writes it when the restored worker's first request arrives, with the
// host's time and random bytes: the worker's fresh identity (see Start).
const StartFile = "start"

// startPoll is the pause between requests for StartFile. startTimeout is
// the TFTP retransmission timeout of one request: short, since a request
// in flight when the guest's state was saved is never answered after the
// restore, and is sent again then. startRetries keeps one request's
// socket open for about a second meanwhile, so that an answer slower than
// startTimeout (a loaded host) is still taken rather than given up on,
// which made each later request late too.
const (
	startPoll    = 5 * time.Millisecond
	startTimeout = 10 * time.Millisecond
	startRetries = 100
)

// ReadyEnv is the environment variable that names the file the guest's
// init makes once the set-up the worker's first requests do without is
// done: the build disk on the work directory, the console's ports and the
// power button (package image's init does them while the worker starts).
// The worker waits for the file before it touches its work directory, and
// before it asks for its start (a saved guest has all of it behind it).
// Unset, the worker does not wait.
const ReadyEnv = "BUILDFARM_READY"

// readyPoll is the pause between looks for ReadyEnv's file.
const readyPoll = 2 * time.Millisecond

// awaitReady waits for the static network to be complete (awaitNetwork)
// and for the file ReadyEnv names, if any: until it exists or ctx is done
// (the agent's deadlines bound the wait); then it enters the work
// directory again.
func (w *Worker) awaitReady(ctx context.Context) error {
	if err := w.awaitNetwork(); err != nil {
		return err
	}
	file := os.Getenv(ReadyEnv)
	if file == "" {
		return nil
	}
	t0 := time.Now()
	for {
		if _, err := os.Stat(file); err == nil {
			break
		}
		t := time.NewTimer(readyPoll)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("waiting for the guest's set-up (%s): %w", file, ctx.Err())
		}
	}
	// The console's driver may have been loaded meanwhile.
	if _, err := w.attachChannel(ctx); err != nil {
		w.log.Debug("no guest channel after the set-up", "err", err)
	}
	// The init started the worker in its directory before the disk was
	// mounted on it: enter the mounted one.
	if err := os.Chdir(w.cfg.Dir); err != nil {
		w.log.Warn("work directory", "err", err)
	}
	w.log.Debug("guest set up", "waited", time.Since(t0).Round(time.Millisecond))
	return nil
}

// Start is the contents of StartFile: what a restored guest must not share
// with the others restored from the same state.
type Start struct {
	Time   time.Time // the host's clock when the agent wrote the file
	Random []byte    // seed for the kernel's random pool, credited in full

	// With tap networking (a start over the guest channel): the VM's
	// fresh MAC, which the worker gives its interface before it asks
	// DHCP for a new lease, and the agent's TFTP server (HOST:PORT).
	MAC, TFTP string
}

// MinRandom and MaxRandom bound Start.Random, in bytes.
const (
	MinRandom = 32
	MaxRandom = 512
)

// Manifest returns s as a manifest: format version 1, time (RFC 3339 with
// nanoseconds), random (hex), and mac and tftp when set.
func (s *Start) Manifest() manifest.Manifest {
	m := manifest.Manifest{
		{Name: "", Value: "1"},
		{Name: "time", Value: s.Time.UTC().Format(time.RFC3339Nano)},
		{Name: "random", Value: hex.EncodeToString(s.Random)},
	}
	if s.MAC != "" {
		m = append(m, manifest.Pair{Name: "mac", Value: s.MAC})
	}
	if s.TFTP != "" {
		m = append(m, manifest.Pair{Name: "tftp", Value: s.TFTP})
	}
	return m
}

// ParseStart reads a StartFile manifest from r; file names it in errors.
func ParseStart(r io.Reader, file string) (*Start, error) {
	ms, err := manifest.Parse(r, file)
	if err != nil {
		return nil, err
	}
	if ms.Len() != 1 {
		return nil, fmt.Errorf("%s: %d manifests, want 1", file, ms.Len())
	}
	m := ms.Manifest(0)
	if len(m) == 0 || m[0].Name != "" || m[0].Value != "1" {
		return nil, fmt.Errorf("%s: not a start manifest of format 1", file)
	}
	s := &Start{}
	var haveTime bool
	for _, p := range m[1:] {
		switch p.Name {
		case "time":
			if haveTime {
				return nil, fmt.Errorf("%s: time given twice", file)
			}
			t, err := time.Parse(time.RFC3339Nano, p.Value)
			if err != nil {
				return nil, fmt.Errorf("%s: time %q: %w", file, p.Value, err)
			}
			s.Time, haveTime = t, true
		case "random":
			if s.Random != nil {
				return nil, fmt.Errorf("%s: random given twice", file)
			}
			b, err := hex.DecodeString(p.Value)
			if err != nil {
				return nil, fmt.Errorf("%s: random: %w", file, err)
			}
			if len(b) < MinRandom || len(b) > MaxRandom {
				return nil, fmt.Errorf("%s: random: %d bytes, want %d to %d", file, len(b), MinRandom, MaxRandom)
			}
			s.Random = b
		case "mac":
			hw, err := net.ParseMAC(p.Value)
			if err != nil || len(hw) != 6 || hw[0]&1 != 0 || s.MAC != "" {
				return nil, fmt.Errorf("%s: mac %q: want one unicast Ethernet address", file, p.Value)
			}
			s.MAC = hw.String()
		case "tftp":
			if _, _, err := net.SplitHostPort(p.Value); err != nil || s.TFTP != "" {
				return nil, fmt.Errorf("%s: tftp %q: want one HOST:PORT", file, p.Value)
			}
			s.TFTP = p.Value
		default:
			return nil, fmt.Errorf("%s: unknown field %q", file, p.Name)
		}
	}
	if !haveTime || s.Random == nil {
		return nil, fmt.Errorf("%s: want the fields time and random", file)
	}
	return s, nil
}

// awaitStart asks for StartFile until the agent serves it, and applies
// it: this is where a warm image's guest is saved, and where a restored
// one goes on. Requests that fail (the file is not there yet, or the
// answer was lost) are repeated every startPoll, without end: the agent's
// startup deadline bounds the wait.
func (w *Worker) awaitStart(ctx context.Context) error {
	// The saved guest has all of its set-up behind it, and has warmed up.
	if err := w.awaitReady(ctx); err != nil {
		return err
	}
	w.warmUp(ctx)
	if w.cfg.StartChannel {
		return w.awaitChannelStart(ctx)
	}
	opts := w.opts
	opts.Timeout, opts.Retries = startTimeout, startRetries
	polls := 0
	for {
		var b bytes.Buffer
		_, err := tftp.Get(ctx, w.cfg.TFTP, StartFile, &b, opts)
		polls++
		if err == nil {
			s, err := ParseStart(&b, StartFile)
			if err != nil {
				return err
			}
			w.log.Info("start", "polls", polls, "host-time", s.Time.Format(time.RFC3339Nano))
			w.applyStart(s)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		t := time.NewTimer(startPoll)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// warmUpDir is the scratch directory, in the build directory, of warmUp.
const warmUpDir = ".warm-up"

// warmUp does once, in a guest whose state is about to be saved, the
// first-time work of each task's worker that the guest would otherwise
// repeat after every restore: it makes the build directory's src and
// artifacts (empty; Build gives them to the steps' user as before),
// compiles the manifest checks' regular expressions, unpacks a small
// archive into a scratch directory (the file system's bitmaps and caches,
// the decompressor's tables), runs a shell in it as
// the steps' user (Build's runShell), removes it and syncs the file
// system, whose journal is then clean in the saved state. Failures are
// logged: a task does the same work anyway. In the busybox machine's
// warm hello task, from the task's fetch to the sources' went from
// 0.17-0.20 s (mostly the make of /build/artifacts, on a file system the
// saved guest had never written) to 5-11 ms (bench/README.md, VM boot).
// What it cannot warm is QEMU's translation cache, which a restore
// starts empty.
func (w *Worker) warmUp(ctx context.Context) {
	t0 := time.Now()
	manifest.CompileSyntaxes()
	err := func() error {
		for _, d := range []string{w.sources(), w.artifacts()} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
		scratch := filepath.Join(w.cfg.Dir, warmUpDir)
		defer os.RemoveAll(scratch)
		if err := archive.Unpack(bytes.NewReader(warmUpArchive()), scratch); err != nil {
			return fmt.Errorf("unpack: %w", err)
		}
		if w.cfg.StepUID != 0 {
			if err := os.Lchown(scratch, w.cfg.StepUID, w.cfg.StepGID); err != nil {
				return err
			}
		}
		env := append(os.Environ(), "HOME="+scratch)
		if err := runShell(ctx, "cat d/* >/dev/null && echo warm >out", scratch, env, w.stepUser(), io.Discard); err != nil {
			return fmt.Errorf("shell: %w", err)
		}
		return nil
	}()
	unix.Sync()
	if err != nil {
		w.log.Warn("warm-up", "err", err)
		return
	}
	w.log.Info("warmed up", "took", time.Since(t0).Round(time.Millisecond))
}

// warmUpArchive returns a small .tar.gz: a directory and a few files.
func warmUpArchive() []byte {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o755})
	for i := range 4 {
		body := bytes.Repeat([]byte("warm up\n"), 64<<i)
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("d/f%d", i), Mode: 0o644, Size: int64(len(body))})
		tw.Write(body)
	}
	tw.Close()
	zw.Close()
	return b.Bytes()
}

// applyStart gives the guest its fresh identity: the host's clock, and
// the random bytes added to the kernel's pool, credited, followed by a
// reseed of the kernel's generator, so that /dev/urandom and getrandom no
// longer continue from the saved state. Failures (a worker run by hand,
// not root) are logged.
func (w *Worker) applyStart(s *Start) {
	tv := unix.NsecToTimeval(s.Time.UnixNano())
	if err := unix.Settimeofday(&tv); err != nil {
		w.log.Warn("clock not set", "err", err)
	}
	if err := addEntropy(s.Random); err != nil {
		w.log.Warn("random pool not reseeded", "err", err)
	}
}

// The ioctls of random(4): RNDADDENTROPY is _IOW('R', 0x03, int[2]),
// RNDRESEEDCRNG _IO('R', 0x07).
const (
	rndAddEntropy  = 0x40085203
	rndReseedCRNG  = 0x5207
	randomDevice   = "/dev/random"
	bitsPerByte    = 8
	poolInfoHeader = 8 // struct rand_pool_info: int entropy_count, int buf_size
)

// addEntropy adds b to the kernel's input pool, crediting all of its bits
// (RNDADDENTROPY), and makes the generator reseed from the pool now
// (RNDRESEEDCRNG).
func addEntropy(b []byte) error {
	f, err := os.OpenFile(randomDevice, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	info := make([]byte, poolInfoHeader+len(b)+3) // buf is __u32[]
	binary.NativeEndian.PutUint32(info[0:], uint32(len(b)*bitsPerByte))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(b)))
	copy(info[poolInfoHeader:], b)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndAddEntropy, uintptr(unsafe.Pointer(&info[0]))); e != 0 {
		return fmt.Errorf("%s: RNDADDENTROPY: %w", randomDevice, e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndReseedCRNG, 0); e != 0 && !errors.Is(e, unix.EINVAL) {
		return fmt.Errorf("%s: RNDRESEEDCRNG: %w", randomDevice, e)
	}
	return nil
}

// startWaitParam is the kernel parameter that makes a worker await
// StartFile.
const startWaitParam = "buildfarm.start"

// StartWaitArg is the kernel command line argument that makes the worker
// of a build VM await StartFile before its task (see Config.AwaitStart).
const StartWaitArg = startWaitParam + "=wait"

// StartChannelArg makes it await its start on the guest channel instead
// (see Config.StartChannel).
const StartChannelArg = startWaitParam + "=channel"
