package machine

import (
	"context"
	"fmt"

	"golang.org/x/sys/unix"
)

// Backend makes, snapshots and deletes the directories of a volume. Every
// method takes whole machine directories (revisions, bootstrapped machines,
// task snapshots).
type Backend interface {
	// Name is "btrfs" or "fallback".
	Name() string
	// Create makes dir, empty and writable.
	Create(ctx context.Context, dir string) error
	// Snapshot makes dst a writable copy of src as it is now, and says
	// how: "btrfs snapshot", "reflink", "qcow2 overlay" or "copy".
	Snapshot(ctx context.Context, src, dst string) (method string, err error)
	// SetReadOnly freezes dir.
	SetReadOnly(ctx context.Context, dir string) error
	// Delete removes dir, read-only or not. A missing dir is not an error.
	Delete(ctx context.Context, dir string) error
}

// Backend names, for Detect and the --backend options.
const (
	BackendAuto     = ""
	BackendBtrfs    = "btrfs"
	BackendFallback = "fallback"
)

// NewBackend returns the backend called name for the volume dir; "" picks
// it from dir's file system type.
func NewBackend(dir, name string) (Backend, error) {
	if name == BackendAuto {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil {
			return nil, fmt.Errorf("statfs %s: %w", dir, err)
		}
		name = BackendFallback
		if st.Type == unix.BTRFS_SUPER_MAGIC {
			name = BackendBtrfs
		}
	}
	switch name {
	case BackendBtrfs:
		return btrfs{}, nil
	case BackendFallback:
		return fallback{}, nil
	}
	return nil, fmt.Errorf("unknown machine storage backend %q (want btrfs or fallback)", name)
}

// IsBtrfs reports whether dir is on btrfs.
func IsBtrfs(dir string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return st.Type == unix.BTRFS_SUPER_MAGIC, nil
}
