package hostos

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"path"
	"strings"
)

// Checksums is a toolchain's checksums file: the files of the toolchain,
// each with its checksum, the first being the toolchain archive whose name
// gives the version.
type Checksums struct {
	Algo     string // "sha256" or "sha512", from the file's name
	Disabled bool   // the first line says "disabled": no agents for this toolchain
	Files    []ChecksumFile
	Version  string // from the first file's name
}

// ChecksumFile is one line: a file, relative to the checksums file, and
// its checksum in lower-case hex.
type ChecksumFile struct {
	Sum, Path string
}

// ErrDisabled is returned for a toolchain whose checksums file says
// "disabled".
var ErrDisabled = errors.New("toolchain disabled by its checksums file")

// NewHash returns a hash of the checksums' algorithm.
func (c *Checksums) NewHash() hash.Hash {
	if c.Algo == "sha512" {
		return sha512.New()
	}
	return sha256.New()
}

// ParseChecksums parses a checksums file named name (its URL: the
// extension .sha256 or .sha512 says the algorithm), as sha256sum and
// sha512sum write it: one "SUM *PATH" (binary) or "SUM  PATH" (text) a
// line. Blank lines and lines starting with # are skipped; a first line
// "disabled" disables the toolchain (the rest is not read). The first file
// is the toolchain archive, named NAME-VERSION.EXT: it gives the version.
func ParseChecksums(name string, b []byte) (*Checksums, error) {
	c := &Checksums{}
	base := path.Base(strings.SplitN(name, "?", 2)[0])
	switch {
	case strings.HasSuffix(base, ".sha256"):
		c.Algo = "sha256"
	case strings.HasSuffix(base, ".sha512"):
		c.Algo = "sha512"
	default:
		return nil, fmt.Errorf("checksums file %s: the name ends neither in .sha256 nor in .sha512", name)
	}
	hexLen := map[string]int{"sha256": 64, "sha512": 128}[c.Algo]
	sc := bufio.NewScanner(bytes.NewReader(b))
	seen := map[string]bool{}
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), " \t\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if len(c.Files) == 0 && strings.TrimSpace(line) == "disabled" {
			c.Disabled = true
			return c, nil
		}
		sum, p, ok := strings.Cut(line, " ")
		if ok && (strings.HasPrefix(p, "*") || strings.HasPrefix(p, " ")) {
			p = p[1:]
		} else {
			ok = false
		}
		bad := func(why string) error { return fmt.Errorf("checksums file %s:%d: %s", name, n, why) }
		if !ok || p == "" {
			return nil, bad(fmt.Sprintf("%q is not \"SUM *PATH\"", line))
		}
		if len(sum) != hexLen || !isHex(sum) {
			return nil, bad(fmt.Sprintf("%q is not a %s checksum (%d hex digits)", sum, c.Algo, hexLen))
		}
		if _, err := Resolve("http://h/x", p); err != nil {
			return nil, bad(fmt.Sprintf("path %v", err))
		}
		if seen[p] {
			return nil, bad(fmt.Sprintf("%s is listed twice", p))
		}
		if isReserved(p) {
			return nil, bad(fmt.Sprintf("%s is a name the toolchain directory keeps for itself", p))
		}
		seen[p] = true
		c.Files = append(c.Files, ChecksumFile{Sum: strings.ToLower(sum), Path: p})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("checksums file %s: %w", name, err)
	}
	if len(c.Files) == 0 {
		return nil, fmt.Errorf("checksums file %s: lists no files (and does not say disabled)", name)
	}
	v, err := archiveVersion(path.Base(c.Files[0].Path))
	if err != nil {
		return nil, fmt.Errorf("checksums file %s: the first file, the toolchain archive: %w", name, err)
	}
	c.Version = v
	return c, nil
}

// archiveExts are the extensions an archive's version ends before.
var archiveExts = []string{".tar.xz", ".tar.gz", ".tar.bz2", ".tar.zst", ".tgz", ".txz", ".tar", ".zip"}

// archiveVersion returns VERSION of NAME-VERSION.EXT: what follows the
// first '-' that is followed by a digit, less the archive extension. So
// build2-toolchain-0.17.0.tar.xz is 0.17.0 and
// build2-toolchain-0.18.0-a.0.20251107.c20441ae.tar.gz is
// 0.18.0-a.0.20251107.c20441ae.
func archiveVersion(file string) (string, error) {
	stem := ""
	for _, e := range archiveExts {
		if strings.HasSuffix(file, e) {
			stem = strings.TrimSuffix(file, e)
			break
		}
	}
	if stem == "" {
		return "", fmt.Errorf("%s: not an archive (%s)", file, strings.Join(archiveExts, ", "))
	}
	for i := 0; i+1 < len(stem); i++ {
		if stem[i] == '-' && stem[i+1] >= '0' && stem[i+1] <= '9' && i > 0 {
			return stem[i+1:], nil
		}
	}
	return "", fmt.Errorf("%s: no version in the name (want NAME-VERSION%s)", file, archiveExts[0])
}

// isReserved reports whether p is one of the files the toolchain directory
// makes itself.
func isReserved(p string) bool {
	return p == VersionFile || p == TrustFile || strings.HasSuffix(p, ".part")
}
