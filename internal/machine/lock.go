package machine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// heldLock is an flock(2) held on a file. Locks taken through separate calls
// conflict even within one process.
type heldLock struct {
	f *os.File
}

// lockPoll is how often a waiting Lock retries.
const lockPoll = 50 * time.Millisecond

// tryLock takes an exclusive lock on path (created if missing) without
// waiting; ok is false when another holder has it.
func tryLock(path string) (l *heldLock, ok bool, err error) { return tryFlock(path, unix.LOCK_EX) }

// tryFlock takes a lock of kind how (LOCK_EX or LOCK_SH) on path without
// waiting.
func tryFlock(path string, how int) (l *heldLock, ok bool, err error) {
	// A holder may delete the lock file as it releases it (the clean-up of
	// a task snapshot). A lock on a file no longer at path locks nothing:
	// open path again.
	for range 10 {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return nil, false, fmt.Errorf("lock %s: %w", path, err)
		}
		err = unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, false, nil
		}
		if err != nil {
			f.Close()
			return nil, false, fmt.Errorf("lock %s: %w", path, err)
		}
		var held, named unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) == nil && unix.Stat(path, &named) == nil &&
			held.Dev == named.Dev && held.Ino == named.Ino {
			return &heldLock{f: f}, true, nil
		}
		f.Close()
	}
	return nil, false, fmt.Errorf("lock %s: the file keeps being replaced", path)
}

// lock takes an exclusive lock on path, waiting until it is free or ctx is
// done.
func lock(ctx context.Context, path string) (*heldLock, error) { return flock(ctx, path, unix.LOCK_EX) }

// flock takes a lock of kind how on path, waiting until it can or ctx is
// done.
func flock(ctx context.Context, path string, how int) (*heldLock, error) {
	t := time.NewTicker(lockPoll)
	defer t.Stop()
	for {
		l, ok, err := tryFlock(path, how)
		if err != nil || ok {
			return l, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("lock %s: %w", path, context.Cause(ctx))
		case <-t.C:
		}
	}
}

// Unlock releases the lock. It may be called more than once.
func (l *heldLock) Unlock() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the last descriptor releases the flock
	l.f = nil
	return err
}
