package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/buildfarm/buildfarm/internal/manifest"
)

// MAC returns the machine's MAC address: locally administered, unicast,
// and the same for the same name.
func MAC(name string) string {
	h := sha256.Sum256([]byte("buildfarm mac " + name))
	h[0] = h[0]&^0x01 | 0x02
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", h[0], h[1], h[2], h[3], h[4], h[5])
}

// machineID hashes the machine's files (kernel, initrd, cmdline, disk.img,
// those present), each as its name, size and content, in that order.
func machineID(ctx context.Context, dir string) (string, error) {
	h := sha256.New()
	for _, name := range []string{KernelFile, InitrdFile, CmdlineFile, DiskFile} {
		f, err := os.Open(filepath.Join(dir, name))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("machine id: %w", err)
		}
		fi, err := f.Stat()
		if err == nil {
			fmt.Fprintf(h, "%s %d\n", name, fi.Size())
			_, err = io.Copy(h, ctxReader{ctx, f})
		}
		f.Close()
		if err != nil {
			return "", fmt.Errorf("machine id: %s: %w", name, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// ctxReader stops reading once ctx is done: hashing a big disk takes a while.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// writeManifest writes the build2 machine manifest of m.
func writeManifest(file string, m *Machine, summary string) error {
	mm := manifest.Machine{ID: m.ID, Name: m.Name, Summary: summary, Type: "kvm", MAC: m.MAC, Arch: string(m.Arch)}
	return manifest.WriteFile(file, []manifest.Manifest{mm.Manifest()})
}
