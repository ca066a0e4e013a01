package console

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/buildfarm/buildfarm/internal/proc"
)

// cmdBackup copies the VM's first writable disk to dest:
//
//  1. If the guest runs: sync and freeze its file systems through the
//     guest channel (a guest without one is copied crash-consistent).
//  2. Stop the VM, unless it is stopped already.
//  3. Copy the disk: cp --reflink=auto for a raw image, qemu-img convert to
//     raw for a qcow2 one (an overlay is copied with what it overlays).
//  4. Resume the VM if it ran, and thaw the guest.
func cmdBackup(s *Server, ctx context.Context, dest string) (string, string, error) {
	if !filepath.IsAbs(dest) {
		return "", "", fmt.Errorf("backup %s: want an absolute path (buildfarm console makes it one)", dest)
	}
	if _, err := os.Lstat(dest); err == nil {
		return "", "", fmt.Errorf("backup %s: exists; choose a new file", dest)
	}
	c := s.cfg.QMP
	bs, err := queryBlock(ctx, c)
	if err != nil {
		return "", "", fmt.Errorf("backup: %w", err)
	}
	var disk *blockInfo
	for i := range bs {
		if bs[i].Inserted != nil && !bs[i].Inserted.RO {
			disk = &bs[i]
			break
		}
	}
	if disk == nil {
		return "", "", errors.New("backup: the VM has no writable disk")
	}
	st, err := c.QueryStatus(ctx)
	if err != nil {
		return "", "", fmt.Errorf("backup: %w", err)
	}
	var notes []string
	running := st.Running
	if running {
		gctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		frozen, err := s.guest.do(gctx, "freeze", "")
		cancel()
		if err != nil {
			notes = append(notes, fmt.Sprintf("guest file systems not frozen (%v): the copy is crash-consistent", err))
		} else {
			notes = append(notes, "guest file systems synced and frozen: "+frozen)
			defer func() {
				tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
				defer cancel()
				if _, err := s.guest.do(tctx, "thaw", ""); err != nil {
					s.log.Warn("backup: thaw", "err", err)
				}
			}()
		}
		if _, err := c.Execute(ctx, "stop", nil); err != nil {
			return "", "", fmt.Errorf("backup: stop: %w", err)
		}
		defer c.Execute(context.WithoutCancel(ctx), "cont", nil)
	} else {
		notes = append(notes, "the VM was "+st.Status+": copied as it stands, the guest not synced")
	}
	src := disk.Inserted.File
	t0 := time.Now()
	if disk.Inserted.Drv == "raw" {
		err = proc.Run(ctx, nil, "cp", "--reflink=auto", "--sparse=always", src, dest)
	} else {
		err = proc.Run(ctx, nil, "qemu-img", "convert", "-U", "-O", "raw", src, dest)
	}
	if err != nil {
		os.Remove(dest)
		return "", "", fmt.Errorf("backup %s to %s: %w", src, dest, err)
	}
	notes = append(notes, fmt.Sprintf("copied %s (%s) in %v", src, disk.Inserted.Drv, time.Since(t0).Round(time.Millisecond)))
	if running {
		notes = append(notes, "resumed")
	}
	return "backup of " + disk.name() + " in " + dest, strings.Join(notes, "\n") + "\n", nil
}
