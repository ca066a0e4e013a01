package hostos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/buildfarm/buildfarm/internal/proc"
)

// Storage labels: the host's state, and its machine volumes.
const (
	StateLabel    = "buildos.state"    // mounted at <root>/state
	MachinesLabel = "buildos.machines" // volume "default"; buildos.machines.<volume> for others
)

// Labelled is a block device with a filesystem label.
type Labelled struct {
	Device, Label, Type string
}

// FindLabels lists the block devices of /sys/class/block whose
// filesystem (ext2/3/4, btrfs or xfs) has a label, reading their
// superblocks (so it needs neither udev nor blkid), in device order.
func FindLabels() ([]Labelled, error) {
	es, err := os.ReadDir("/sys/class/block")
	if err != nil {
		return nil, fmt.Errorf("block devices: %w", err)
	}
	var out []Labelled
	for _, e := range es {
		dev := filepath.Join("/dev", e.Name())
		f, err := os.Open(dev)
		if err != nil {
			continue // no node (or not ours to read)
		}
		label, typ := readLabel(f)
		f.Close()
		if label != "" {
			out = append(out, Labelled{Device: dev, Label: label, Type: typ})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Device < out[j].Device })
	return out, nil
}

// readLabel returns the label and type of the filesystem on r, or "".
func readLabel(r io.ReaderAt) (label, typ string) {
	at := func(off int64, n int) []byte {
		b := make([]byte, n)
		if _, err := r.ReadAt(b, off); err != nil {
			return nil
		}
		return b
	}
	cstr := func(b []byte) string {
		if i := bytes.IndexByte(b, 0); i >= 0 {
			b = b[:i]
		}
		return strings.TrimSpace(string(b))
	}
	// ext2/3/4: the superblock at 1024, magic 0xEF53 at 56, label at 120.
	if sb := at(1024, 136); sb != nil && sb[56] == 0x53 && sb[57] == 0xEF {
		return cstr(sb[120:136]), "ext4"
	}
	// btrfs: the superblock at 64 KiB, magic at 0x40, label at 0x12b.
	if sb := at(0x10000, 0x12b+256); sb != nil && string(sb[0x40:0x48]) == "_BHRfS_M" {
		return cstr(sb[0x12b:]), "btrfs"
	}
	// xfs: magic XFSB at 0, label at 108.
	if sb := at(0, 120); sb != nil && string(sb[:4]) == "XFSB" {
		return cstr(sb[108:120]), "xfs"
	}
	return "", ""
}

// ErrNoMachines says no filesystem is labelled for machines.
var ErrNoMachines = errors.New(`no machine volume: no filesystem is labelled buildos.machines or buildos.machines.VOLUME.
Make one (it takes the whole device; btrfs is best), then reboot:

    mkfs.btrfs -L buildos.machines /dev/DEVICE

and, for the host's state (optional):

    mkfs.ext4 -L buildos.state /dev/OTHER`)

// Storage is the host's storage, found by label and mounted.
type Storage struct {
	State    string            // <root>/state, or "" when no state volume
	Machines string            // <root>/build/machines: one directory per volume
	Volumes  map[string]string // volume name -> device
	mounted  []string
}

// MountStorage finds the labelled filesystems among labels and mounts them
// under root: buildos.state at <root>/state, buildos.machines at
// <root>/build/machines/default and buildos.machines.VOLUME at
// <root>/build/machines/VOLUME (ext4 labels hold 16 bytes, so a named
// volume needs btrfs, whose hold 255). Without a machine volume it returns
// ErrNoMachines (and mounts nothing). Two filesystems with one label are
// an error.
func MountStorage(ctx context.Context, log *slog.Logger, root string, labels []Labelled) (*Storage, error) {
	s := &Storage{Machines: filepath.Join(root, "build", "machines"), Volumes: map[string]string{}}
	state := ""
	seen := map[string]string{}
	for _, l := range labels {
		if prev, dup := seen[l.Label]; dup {
			return nil, fmt.Errorf("label %s is on both %s and %s: relabel one", l.Label, prev, l.Device)
		}
		seen[l.Label] = l.Device
		switch {
		case l.Label == StateLabel:
			state = l.Device
		case l.Label == MachinesLabel:
			s.Volumes["default"] = l.Device
		case strings.HasPrefix(l.Label, MachinesLabel+"."):
			v := strings.TrimPrefix(l.Label, MachinesLabel+".")
			if err := checkToolchainName(v); err != nil {
				return nil, fmt.Errorf("%s (label %s): volume name: %w", l.Device, l.Label, err)
			}
			s.Volumes[v] = l.Device
		}
	}
	if len(s.Volumes) == 0 {
		return nil, ErrNoMachines
	}
	mount := func(dev, dir string) error {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := proc.Run(ctx, nil, "mount", dev, dir); err != nil {
			return fmt.Errorf("mount %s on %s: %w", dev, dir, err)
		}
		s.mounted = append(s.mounted, dir)
		log.Info("mounted", "device", dev, "on", dir)
		return nil
	}
	if state != "" {
		s.State = filepath.Join(root, "state")
		if err := mount(state, s.State); err != nil {
			return nil, err
		}
	}
	vols := make([]string, 0, len(s.Volumes))
	for v := range s.Volumes {
		vols = append(vols, v)
	}
	sort.Strings(vols)
	for _, v := range vols {
		if err := mount(s.Volumes[v], filepath.Join(s.Machines, v)); err != nil {
			s.Unmount(ctx)
			return nil, err
		}
	}
	return s, nil
}

// Unmount unmounts what MountStorage mounted, in reverse order.
func (s *Storage) Unmount(ctx context.Context) error {
	var errs []error
	for i := len(s.mounted) - 1; i >= 0; i-- {
		if err := proc.Run(ctx, nil, "umount", s.mounted[i]); err != nil {
			errs = append(errs, err)
		}
	}
	s.mounted = nil
	return errors.Join(errs...)
}
