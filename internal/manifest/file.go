package manifest

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// ReadFile parses the manifest stream in the file at path with
// DefaultLimits; errors name the file as path.
func ReadFile(path string) (*Stream, error) {
	return DefaultLimits.ReadFile(path)
}

// ReadFile parses the manifest stream in the file at path with l's limits;
// errors name the file as path.
func (l Limits) ReadFile(path string) (*Stream, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	defer f.Close()
	var b strings.Builder
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() <= maxStream {
		b.Grow(int(fi.Size()) + 1) // +1: reading to the end finds EOF without growing.
	}
	if _, err := io.Copy(&b, io.LimitReader(f, maxStream+1)); err != nil {
		return nil, fmt.Errorf("read manifest %s: %w", path, err)
	}
	return l.parse(b.String(), path)
}

// WriteFile serializes ms into the file at path atomically: it writes a
// temporary file in the same directory, syncs it and renames it over path,
// so that readers see either the old content or the whole new one. The file
// gets mode 0644.
func WriteFile(path string, ms []Manifest) (err error) {
	var b bytes.Buffer
	if err := Serialize(&b, ms); err != nil {
		return fmt.Errorf("write manifest %s: %w", path, err)
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return fmt.Errorf("write manifest %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := f.Write(b.Bytes()); err != nil {
		return fmt.Errorf("write manifest %s: %w", path, err)
	}
	if err := f.Chmod(0o644); err != nil {
		return fmt.Errorf("write manifest %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write manifest %s: sync: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write manifest %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write manifest %s: %w", path, err)
	}
	// Make the rename durable; not every file system can sync a directory.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
