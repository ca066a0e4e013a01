package machine

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
)

// DefaultVolume is the volume that commands use when none is named.
const DefaultVolume = "default"

// Store is a directory of volumes: the agent's --machines.
type Store struct {
	Dir      string
	Protocol int          // bootstrap protocol; 0 means BootstrapProtocol
	Backend  string       // BackendAuto (per volume, from its file system), BackendBtrfs or BackendFallback
	Log      *slog.Logger // nil: discard
}

func (s *Store) protocol() int {
	if s.Protocol == 0 {
		return BootstrapProtocol
	}
	return s.Protocol
}

func (s *Store) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

// Volume opens the volume called name, creating its directory when create
// is set.
func (s *Store) Volume(name string, create bool) (*Volume, error) {
	if err := CheckName(name); err != nil {
		return nil, fmt.Errorf("volume: %w", err)
	}
	dir := filepath.Join(s.Dir, name)
	if create {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("volume %s: %w", dir, err)
		}
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("volume %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("volume %s: not a directory", dir)
	}
	b, err := NewBackend(dir, s.Backend)
	if err != nil {
		return nil, err
	}
	return &Volume{Name: name, Dir: dir, Backend: b, Protocol: s.protocol(), Log: s.log().With("volume", name)}, nil
}

// Volumes opens every volume of the store, in name order.
func (s *Store) Volumes() ([]*Volume, error) {
	des, err := os.ReadDir(s.Dir)
	if err != nil {
		return nil, fmt.Errorf("machines %s: %w", s.Dir, err)
	}
	var vs []*Volume
	for _, de := range des {
		if !de.IsDir() || isHidden(de.Name()) {
			continue
		}
		v, err := s.Volume(de.Name(), false)
		if err != nil {
			return nil, err
		}
		vs = append(vs, v)
	}
	return vs, nil
}

// Volume is one directory of machines, on one backend.
type Volume struct {
	Name     string
	Dir      string
	Backend  Backend
	Protocol int
	Log      *slog.Logger
}

func (v *Volume) machineDir(name string) string { return filepath.Join(v.Dir, name) }

// Machines lists the names of the machine directories of the volume.
func (v *Volume) Machines() ([]string, error) {
	des, err := os.ReadDir(v.Dir)
	if err != nil {
		return nil, fmt.Errorf("volume %s: %w", v.Dir, err)
	}
	var names []string
	for _, de := range des {
		if de.IsDir() && !isHidden(de.Name()) && CheckName(de.Name()) == nil {
			names = append(names, de.Name())
		}
	}
	return names, nil
}

// entries classifies the entries of a machine directory.
func (v *Volume) entries(name string) ([]entry, error) {
	des, err := os.ReadDir(v.machineDir(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("machine %s in %s: %w", name, v.Dir, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("machine %s: %w", v.machineDir(name), err)
	}
	var es []entry
	for _, de := range des {
		es = append(es, classify(name, de.Name()))
	}
	return es, nil
}

// Current resolves the link of machine name for the volume's bootstrap
// protocol: the revision that new bootstraps use, and its directory.
// ErrRemoved when there is no link, ErrNotFound when there is no machine.
func (v *Volume) Current(name string) (Revision, string, error) {
	link := filepath.Join(v.machineDir(name), linkName(name, v.Protocol))
	target, err := os.Readlink(link)
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat(v.machineDir(name)); errors.Is(serr, fs.ErrNotExist) {
			return Revision{}, "", fmt.Errorf("machine %s in %s: %w", name, v.Dir, ErrNotFound)
		}
		return Revision{}, "", fmt.Errorf("machine %s: no link %s: %w", name, link, ErrRemoved)
	}
	if err != nil {
		return Revision{}, "", fmt.Errorf("machine %s: %w", name, err)
	}
	e := classify(name, filepath.Base(target))
	if e.kind != kindRevision || filepath.Base(target) != target {
		return Revision{}, "", fmt.Errorf("machine %s: link %s points to %q, not a revision of it", name, link, target)
	}
	return e.revision, filepath.Join(v.machineDir(name), target), nil
}
