package machine

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"

	"github.com/buildfarm/buildfarm/internal/proc"
)

// btrfs keeps every machine directory as a subvolume, through btrfs-progs.
type btrfs struct{}

func (btrfs) Name() string { return BackendBtrfs }

func (btrfs) Create(ctx context.Context, dir string) error {
	if err := proc.Run(ctx, nil, "btrfs", "subvolume", "create", dir); err != nil {
		return fmt.Errorf("create subvolume %s: %w", dir, err)
	}
	return nil
}

func (btrfs) Snapshot(ctx context.Context, src, dst string) (string, error) {
	if err := proc.Run(ctx, nil, "btrfs", "subvolume", "snapshot", src, dst); err != nil {
		return "", fmt.Errorf("snapshot %s to %s: %w", src, dst, err)
	}
	return "btrfs snapshot", nil
}

func (btrfs) SetReadOnly(ctx context.Context, dir string) error {
	if err := proc.Run(ctx, nil, "btrfs", "property", "set", "-ts", dir, "ro", "true"); err != nil {
		return fmt.Errorf("make %s read-only: %w", dir, err)
	}
	return nil
}

func (btrfs) Delete(ctx context.Context, dir string) error {
	sub, err := IsSubvolume(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !sub { // a half-made plain directory
		return removeAll(dir)
	}
	if err := proc.Run(ctx, nil, "btrfs", "subvolume", "delete", dir); err != nil {
		return fmt.Errorf("delete subvolume %s: %w", dir, err)
	}
	return nil
}

// IsSubvolume reports whether dir is the root of a btrfs subvolume (whose
// inode number is always 256).
func IsSubvolume(dir string) (bool, error) {
	fi, err := os.Lstat(dir)
	if err != nil {
		return false, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !fi.IsDir() {
		return false, nil
	}
	isb, err := IsBtrfs(dir)
	return err == nil && isb && st.Ino == 256, err
}
