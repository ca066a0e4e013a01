package machine

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/buildfarm/buildfarm/internal/manifest"
)

// Listed is a machine's current revision, as `buildfarm machine list`
// shows it.
type Listed struct {
	Volume   string
	Name     string
	Revision Revision
	Machine  *manifest.Machine
}

// List returns the current revision of every machine of every volume for
// the store's bootstrap protocol, by volume and name. Machines without a
// link (being removed) are left out.
func (s *Store) List() ([]Listed, error) {
	vs, err := s.Volumes()
	if err != nil {
		return nil, err
	}
	var ls []Listed
	for _, v := range vs {
		names, err := v.Machines()
		if err != nil {
			return nil, err
		}
		for _, name := range names {
			rev, dir, err := v.Current(name)
			if errors.Is(err, ErrRemoved) || errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return nil, err
			}
			m, err := readMachine(filepath.Join(dir, ManifestFile))
			if err != nil {
				return nil, fmt.Errorf("machine %s in %s: %w", name, v.Dir, err)
			}
			ls = append(ls, Listed{Volume: v.Name, Name: name, Revision: rev, Machine: m})
		}
	}
	return ls, nil
}
