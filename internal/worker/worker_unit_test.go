package worker

import (
	"strings"
	"testing"
)

func TestParseCmdline(t *testing.T) {
	tests := []struct {
		cmdline string
		want    Config
		wantErr string
	}{
		{"console=ttyS0 quiet", DefaultConfig(), ""},
		{"buildfarm.tftp=10.0.2.2:6969 buildfarm.mode=bootstrap", func() Config {
			c := DefaultConfig()
			c.TFTP, c.Mode = "10.0.2.2:6969", ModeBootstrap
			return c
		}(), ""},
		{"buildfarm.tftp=192.168.1.1", func() Config { c := DefaultConfig(); c.TFTP = "192.168.1.1:23401"; return c }(), ""},
		{"buildfarm.dir=/work buildfarm.blksize=1468", func() Config {
			c := DefaultConfig()
			c.Dir, c.BlockSize = "/work", 1468
			return c
		}(), ""},
		{"buildfarm.mode=fly", Config{}, "mode must be build or bootstrap"},
		{"buildfarm.dir=rel", Config{}, "not an absolute path"},
		{"buildfarm.blksize=70000", Config{}, "block size must be 8 to 65464"},
		{"buildfarm.blksize=x", Config{}, "block size"},
	}
	for _, tt := range tests {
		c := DefaultConfig()
		err := c.ParseCmdline(tt.cmdline)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseCmdline(%q) = %v, want error containing %q", tt.cmdline, err, tt.wantErr)
			}
			continue
		}
		if err != nil || c != tt.want {
			t.Errorf("ParseCmdline(%q) = %+v, %v; want %+v", tt.cmdline, c, err, tt.want)
		}
	}
}

func TestCapBuffer(t *testing.T) {
	tests := []struct {
		limit  int
		writes []string
		want   string
	}{
		{10, []string{"abc"}, "abc"},
		{10, []string{"0123456789"}, "0123456789"},
		{10, []string{"0123456789abc"}, "01234\n[... 3 bytes of log truncated ...]\n89abc"},
		{10, []string{"01234", "56789a", "bc", "d"}, "01234\n[... 4 bytes of log truncated ...]\n9abcd"},
		{4, []string{"ab\n", "cdefgh"}, "ab\n[... 5 bytes of log truncated ...]\ngh"},
	}
	for _, tt := range tests {
		c := newCapBuffer(tt.limit)
		for _, w := range tt.writes {
			c.Write([]byte(w))
		}
		if got := c.String(); got != tt.want {
			t.Errorf("capBuffer(%d) after %q = %q, want %q", tt.limit, tt.writes, got, tt.want)
		}
	}
}

func TestCut(t *testing.T) {
	for _, tt := range []struct {
		s    string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"0123456789", 4, "0123..."},
		{"ééé", 3, "é..."}, // not inside a character
	} {
		if got := cut(tt.s, tt.n); got != tt.want {
			t.Errorf("cut(%q, %d) = %q, want %q", tt.s, tt.n, got, tt.want)
		}
	}
}
