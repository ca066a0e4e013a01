package hostos

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
)

// SplitCmdline splits a kernel command line into its parameters as the
// kernel does: spaces (and tabs and newlines) separate parameters except
// inside double quotes, and the quotes themselves are dropped, so that
// buildos.ssh_key="ssh-ed25519 AAAA... me" is one parameter whose value
// holds spaces. There are no escapes. An unterminated quote is an error
// (the kernel would take the rest of the line as the value).
func SplitCmdline(s string) ([]string, error) {
	var (
		out    []string
		cur    strings.Builder
		inQ    bool
		inWord bool
		qpos   int
	)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			inQ = !inQ
			inWord = true
			qpos = i
		case !inQ && (c == ' ' || c == '\t' || c == '\n' || c == '\r'):
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inQ {
		return nil, fmt.Errorf("kernel command line: the double quote at offset %d is not closed", qpos)
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out, nil
}

// ParseCmdline reads the buildos.* parameters of a kernel command line
// (other parameters are the kernel's and init's, and are skipped).
func ParseCmdline(s string) (*Config, error) {
	words, err := SplitCmdline(s)
	if err != nil {
		return nil, err
	}
	var params []Param
	for _, w := range words {
		name, value, ok := strings.Cut(w, "=")
		if !strings.HasPrefix(name, Prefix) {
			continue
		}
		if !ok {
			return nil, fmt.Errorf("kernel command line: %s: no value (want %s=VALUE)", name, name)
		}
		params = append(params, Param{Name: strings.TrimPrefix(name, Prefix), Value: value, Where: "kernel command line"})
	}
	return build(params)
}

// ParseFile reads the configuration of an ordinary host from a file: one
// NAME=VALUE a line, NAME with or without the buildos. prefix (so that a
// line pasted from a kernel command line works as it is); blank lines and
// lines starting with # are skipped; spaces around NAME and VALUE are
// trimmed; a VALUE wholly in double quotes loses them (so ssh_key may be
// written either way). name is the file's name for messages.
func ParseFile(name string, r io.Reader) (*Config, error) {
	var params []Param
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		where := fmt.Sprintf("%s:%d", name, n)
		if !ok || k == "" {
			return nil, fmt.Errorf("%s: %q is not NAME=VALUE", where, line)
		}
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
		}
		params = append(params, Param{Name: strings.TrimPrefix(k, Prefix), Value: v, Where: where})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return build(params)
}

// ReadFile is ParseFile of the file at path.
func ReadFile(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	return ParseFile(path, bytes.NewReader(b))
}

// ReadCmdlineFile is ParseCmdline of the file at path (/proc/cmdline).
func ReadCmdlineFile(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("kernel command line: %w", err)
	}
	return ParseCmdline(string(b))
}
