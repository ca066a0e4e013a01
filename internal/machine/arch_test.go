package machine

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/machine/machinetest"
)

func TestArch(t *testing.T) {
	dir := t.TempDir()
	write := func(name, extra string) string {
		d := filepath.Join(dir, name)
		machinetest.MakeMachine(t, d, name, "id-"+name, 'a')
		if extra != "" {
			f, err := os.OpenFile(filepath.Join(d, ManifestFile), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString(extra)
			f.Close()
		}
		return d
	}
	bare := filepath.Join(dir, "bare")
	os.Mkdir(bare, 0o755)
	for _, tt := range []struct {
		dir  string
		want arch.Arch
		err  string
	}{
		{write("x", ""), arch.X8664, ""},
		{write("a", "buildfarm-arch: aarch64\n"), arch.AArch64, ""},
		{write("bad", "buildfarm-arch: mips\n"), "", "invalid 'buildfarm-arch' value 'mips'"},
		{bare, arch.X8664, ""},
	} {
		got, err := Arch(tt.dir)
		if got != tt.want || (tt.err == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tt.err) {
			t.Errorf("Arch(%s) = %q, %v, want %q, error %q", tt.dir, got, err, tt.want, tt.err)
		}
	}
}
