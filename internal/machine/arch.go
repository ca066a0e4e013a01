package machine

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/buildfarm/buildfarm/internal/arch"
)

// Arch returns the guest architecture of the machine directory dir (a
// revision, a bootstrapped machine or a task's snapshot): its manifest's
// buildfarm-arch, x86_64 when the manifest does not say or there is no
// manifest (a machine made by hand).
func Arch(dir string) (arch.Arch, error) {
	m, err := readMachine(filepath.Join(dir, ManifestFile))
	if errors.Is(err, fs.ErrNotExist) {
		return arch.X8664, nil
	}
	if err != nil {
		return "", fmt.Errorf("machine %s: %w", dir, err)
	}
	return m.Architecture(), nil
}
