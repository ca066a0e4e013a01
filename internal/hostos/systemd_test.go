package hostos

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/buildfarm/buildfarm/internal/testenv"
)

// TestInstallVerify: the units installed into a temporary root pass
// systemd-analyze verify, and carry the slices' limits.
func TestInstallVerify(t *testing.T) {
	sa := testenv.NeedProgram(t, "systemd-analyze")
	root := t.TempDir()
	conf := filepath.Join(t.TempDir(), "host.conf")
	os.WriteFile(conf, []byte("toolchain_url=http://h/t.sha256\ncontroller_url=http://c/\ninstances=2\n"), 0o644)
	c, err := ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	d, err := Derive(c, Host{CPUs: 6, RAMKiB: 12 << 20})
	if err != nil {
		t.Fatal(err)
	}
	// verify checks that the programs the units run exist: this test's
	// binary stands in for buildfarm.
	prog, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	in := &Install{Root: root, Program: prog, Config: conf, Derived: d, AuthKey: InstallKey}
	if _, err := in.Write(); err != nil {
		t.Fatal(err)
	}
	// The agents' key is made under the root, and the monitor passes it on.
	if in.Key == nil || !in.Key.Created || in.Key.Path != filepath.Join(root, InstallKey) {
		t.Fatalf("install's key: %+v, want one made at %s under the root", in.Key, InstallKey)
	}
	if _, err := EnsureHostKey(in.Key.Path); err != nil {
		t.Errorf("the key install made: %v", err)
	}
	unitDir := filepath.Join(root, "etc/systemd/system")
	// The units under the root first, then the system's (targets and
	// slices they name); no running systemd needed.
	cmd := exec.Command(sa, "verify", "--man=no", filepath.Join(unitDir, MonitorUnit), filepath.Join(unitDir, AgentSlice))
	cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+unitDir+":")
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	svc, _ := os.ReadFile(filepath.Join(unitDir, MonitorUnit))
	slice, _ := os.ReadFile(filepath.Join(unitDir, AgentSlice))
	// 6 CPUs, 8 GiB after the reserve, two instances: 3 CPUs and 4 GiB
	// (+ margin) each.
	for _, want := range []string{"ExecStart=" + prog + " hostos monitor --config /etc/buildfarm/hostos.conf --machines /var/lib/buildfarm/machines --tftp /var/lib/buildfarm/tftp --systemd --auth-key " + InstallKey + "\n"} {
		if !strings.Contains(string(svc), want) {
			t.Errorf("%s lacks %q:\n%s", MonitorUnit, want, svc)
		}
	}
	if want := "CPUQuota=600%\nMemoryMax=9437184K\n"; !strings.Contains(string(slice), want) {
		t.Errorf("%s lacks %q:\n%s", AgentSlice, want, slice)
	}
	// Installing again keeps the key.
	fp := in.Key.Fingerprint
	if _, err := in.Write(); err != nil || in.Key.Created || in.Key.Fingerprint != fp {
		t.Errorf("second install: %v, key %+v; want the first key (%s) kept", err, in.Key, fp)
	}
	if l, err := os.Readlink(filepath.Join(unitDir, "multi-user.target.wants", MonitorUnit)); err != nil || l != "/etc/systemd/system/"+MonitorUnit {
		t.Errorf("not enabled: %q, %v", l, err)
	}
	scope := strings.Join(ScopeCommand(d.Toolchains[0], 2), " ")
	for _, want := range []string{"--unit=buildfarm-agent-default-2", "--slice=buildfarm.slice", "CPUQuota=300%", "MemoryMax=4718592K"} {
		if !strings.Contains(scope, want) {
			t.Errorf("scope command %q lacks %q", scope, want)
		}
	}
}
