package worker

import (
	"encoding/hex"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/buildfarm/buildfarm/internal/manifest"
)

// ToolchainFiles is toolchain.manifest: the toolchain's id and the files
// the worker installs, each "file: NAME SHA256".
type ToolchainFiles struct {
	ID    string
	Files []ToolchainFileEntry
}

// ToolchainFileEntry is one file of a toolchain.
type ToolchainFileEntry struct {
	Name   string
	SHA256 string
}

// ParseToolchainFiles reads toolchain.manifest from r.
func ParseToolchainFiles(r io.Reader, file string) (*ToolchainFiles, error) {
	ms, err := manifest.Parse(r, file)
	if err != nil {
		return nil, err
	}
	if ms.Len() != 1 {
		return nil, fmt.Errorf("%s: %d manifests, want 1", file, ms.Len())
	}
	tc := &ToolchainFiles{}
	for _, p := range ms.Manifest(0)[1:] {
		bad := func(msg string) error {
			return &manifest.Error{File: file, Line: int(p.Line), Column: int(p.Column), Msg: "toolchain manifest: " + msg}
		}
		switch p.Name {
		case "id":
			tc.ID = p.Value
		case "file":
			name, sum, ok := strings.Cut(p.Value, " ")
			sum = strings.TrimSpace(sum)
			if !ok || name == "" {
				return nil, bad("file: want 'NAME SHA256'")
			}
			if b, err := hex.DecodeString(sum); err != nil || len(b) != 32 {
				return nil, bad(fmt.Sprintf("file %s: invalid sha256 %q", name, sum))
			}
			if path.IsAbs(name) || path.Clean(name) != name || strings.HasPrefix(name, "..") {
				return nil, bad(fmt.Sprintf("file %q: not a plain relative name", name))
			}
			tc.Files = append(tc.Files, ToolchainFileEntry{Name: name, SHA256: sum})
		default:
			return nil, bad(fmt.Sprintf("unknown field %q", p.Name))
		}
	}
	if tc.ID == "" {
		return nil, &manifest.Error{File: file, Line: int(ms.Manifest(0)[0].Line), Msg: "toolchain manifest: no id"}
	}
	return tc, nil
}
