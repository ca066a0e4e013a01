package hostos

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const (
	fp1 = "AB:CD:EF:01"
	key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample build@farm"
)

func TestSplitCmdline(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"a b\tc\n", []string{"a", "b", "c"}},
		{`x="a b" y`, []string{"x=a b", "y"}},
		{`"x=a b"`, []string{"x=a b"}},
		{`x=""`, []string{"x="}},
		{`x="a"b"c d"`, []string{"x=abc d"}},
		{"  ", nil},
	} {
		got, err := SplitCmdline(tc.in)
		if err != nil {
			t.Errorf("SplitCmdline(%q): %v", tc.in, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("SplitCmdline(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
	if _, err := SplitCmdline(`a x="b c`); err == nil || !strings.Contains(err.Error(), "offset 4") {
		t.Errorf("unterminated quote: err = %v, want one naming offset 4", err)
	}
}

func TestParseCmdline(t *testing.T) {
	line := `BOOT_IMAGE=/buildos/buildos-image quiet buildos.smtp_relay=mail.example.org:25 ` +
		`buildos.admin_email=admin@example.org buildos.buildid_url=tftp://10.0.0.1/buildos/buildos-buildid ` +
		`buildos.ssh_key="` + key + `" buildos.cpu_overcommit=3/2 buildos.ram_reserved=2 ` +
		`buildos.toolchain_url=https://example.org/toolchain.sha256 buildos.toolchain_trust=` + fp1 + ` ` +
		`buildos.controller_url=https://ci.example.org/?build-task buildos.controller_url=https://ci2.example.org/?build-task ` +
		`buildos.controller_trust=` + fp1 + ` ` +
		`buildos.toolchain_url.stage=file:///srv/stage.sha512 buildos.instances.stage=2 buildos.nice.stage=-5 ` +
		`buildos.bridge.stage=br0 buildos.controller_url.stage=http://stage.example.org/ buildos.frobnicate=1 ` +
		`buildos.machines=ignored -- init args`
	c, err := ParseCmdline(line)
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		SMTPRelay: "mail.example.org:25", AdminEmail: "admin@example.org",
		BuildIDURL: "tftp://10.0.0.1/buildos/buildos-buildid", SSHKey: key,
		CPUOvercommit: Ratio{3, 2}, RAMOvercommit: Ratio{1, 1}, RAMReserved: 2,
		Toolchains: []*Toolchain{
			{Name: "default", URL: "https://example.org/toolchain.sha256", Trust: fp1, Instances: 1, Bridge: "br1",
				Controllers:     []string{"https://ci.example.org/?build-task", "https://ci2.example.org/?build-task"},
				ControllerTrust: []string{fp1}},
			{Name: "stage", URL: "file:///srv/stage.sha512", Instances: 2, Nice: -5, Bridge: "br0", BridgeSet: true,
				Controllers: []string{"http://stage.example.org/"}, ControllerTrust: []string{}},
		},
		Warnings: []string{"kernel command line: unknown parameter buildos.frobnicate ignored"},
	}
	if diff := cmp.Diff(want, c); diff != "" {
		t.Errorf("ParseCmdline (-want +got):\n%s", diff)
	}
}

// TestParseErrors: each bad value is an error that names its parameter.
func TestParseErrors(t *testing.T) {
	base := " buildos.toolchain_url=http://h/t.sha256 buildos.controller_url=http://c/"
	for _, tc := range []struct{ line, param string }{
		{"buildos.nice=20", "buildos.nice"},
		{"buildos.nice.x=-21", "buildos.nice.x"},
		{"buildos.bridge=br2", "buildos.bridge"},
		{"buildos.instances=0", "buildos.instances"},
		{"buildos.cpu_overcommit=3/0", "buildos.cpu_overcommit"},
		{"buildos.ram_overcommit=x", "buildos.ram_overcommit"},
		{"buildos.ram_reserved=-1", "buildos.ram_reserved"},
		{"buildos.cpu_reserved=a", "buildos.cpu_reserved"},
		{"buildos.toolchain_url.a-b=http://h/x", "buildos.toolchain_url.a-b"},
		{"buildos.nice.=1", "buildos.nice."},
		{"buildos.toolchain_trust=zz", "buildos.toolchain_trust"},
		{"buildos.controller_url=ftp://h/", "buildos.controller_url"},
		{`buildos.smtp_relay="a b"`, "buildos.smtp_relay"},
		{"buildos.smtp_relay=host:0", "buildos.smtp_relay"},
		{"buildos.admin_email=nobody", "buildos.admin_email"},
		{"buildos.ssh_key=AAAA", "buildos.ssh_key"},
		{"buildos.admin_email.x=a@b", "buildos.admin_email.x"},
		{"buildos.buildid_url", "buildos.buildid_url"},
		{"buildos.nice.other=1", "buildos.toolchain_url.other"},
		{"buildos.toolchain_url.other=http://h/x", "buildos.controller_url.other"},
	} {
		_, err := ParseCmdline(tc.line + base)
		if err == nil || !strings.Contains(err.Error(), tc.param+":") {
			t.Errorf("ParseCmdline(%q) = %v, want an error naming %s", tc.line, err, tc.param)
		}
	}
}

func TestParseFile(t *testing.T) {
	in := "# an ordinary host\n\nbuildos.toolchain_url = http://h/t.sha256\ncontroller_url=http://c/\nssh_key=\"" + key + "\"\nnice=3\n"
	c, err := ParseFile("host.conf", strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if tc := c.Toolchain("default"); tc == nil || tc.Nice != 3 || tc.URL != "http://h/t.sha256" || c.SSHKey != key {
		t.Errorf("ParseFile = %+v, toolchain %+v", c, tc)
	}
	_, err = ParseFile("host.conf", strings.NewReader("nice=3\nbridge br0\n"))
	if err == nil || !strings.Contains(err.Error(), "host.conf:2:") {
		t.Errorf("bad line: err = %v, want one naming host.conf:2", err)
	}
	_, err = ParseFile("host.conf", strings.NewReader("toolchain_url=http://h/t\ncontroller_url=http://c/\nnice=x\n"))
	if err == nil || !strings.Contains(err.Error(), "host.conf:3: buildos.nice:") {
		t.Errorf("bad value: err = %v, want one naming host.conf:3 and buildos.nice", err)
	}
}

// TestSlicesManualExample is the manual's example: 8 CPUs, cpu_overcommit
// 3/2, three toolchains: 4 CPUs each.
func TestSlicesManualExample(t *testing.T) {
	line := "buildos.cpu_overcommit=3/2"
	for _, n := range []string{"", ".a", ".b"} {
		line += " buildos.toolchain_url" + n + "=http://h/t.sha256 buildos.controller_url" + n + "=http://c/"
	}
	c, err := ParseCmdline(line)
	if err != nil {
		t.Fatal(err)
	}
	d, err := Derive(c, Host{CPUs: 8, RAMKiB: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range d.Toolchains {
		// RAM: 16 GiB less the default 4 GiB, shared by three.
		if tc.CPUs != 4 || tc.RAMKiB != (12<<20)/3 {
			t.Errorf("toolchain %s: slice %+v, want 4 CPUs and %d KiB", tc.Name, tc.Slice, (12<<20)/3)
		}
	}
	if len(d.Toolchains) != 3 {
		t.Errorf("%d toolchains, want 3", len(d.Toolchains))
	}
}

func TestSlicesInstancesAndReserve(t *testing.T) {
	c, err := ParseCmdline("buildos.toolchain_url=http://h/t buildos.controller_url=http://c/ buildos.instances=3 " +
		"buildos.toolchain_url.x=http://h/x buildos.controller_url.x=http://c/ buildos.cpu_reserved=2 " +
		"buildos.ram_reserved=8 buildos.ram_overcommit=2")
	if err != nil {
		t.Fatal(err)
	}
	d, err := Derive(c, Host{CPUs: 18, RAMKiB: 24 << 20})
	if err != nil {
		t.Fatal(err)
	}
	// (18-2) CPUs / 4 instances = 4; (24-8) GiB * 2 / 4 = 8 GiB.
	for _, tc := range d.Toolchains {
		if tc.CPUs != 4 || tc.RAMKiB != 8<<20 {
			t.Errorf("toolchain %s: %+v, want 4 CPUs, 8 GiB", tc.Name, tc.Slice)
		}
	}
	if _, err := Derive(c, Host{CPUs: 2, RAMKiB: 24 << 20}); err == nil || !strings.Contains(err.Error(), "cpu_reserved") {
		t.Errorf("reserve above the CPUs: err = %v", err)
	}
	if _, err := Derive(c, Host{CPUs: 8, RAMKiB: 8 << 20}); err == nil || !strings.Contains(err.Error(), "ram_reserved") {
		t.Errorf("reserve above the RAM: err = %v", err)
	}
}

func TestDerivedJSON(t *testing.T) {
	c, err := ParseCmdline("buildos.toolchain_url=http://h/t buildos.controller_url=http://c/ buildos.cpu_overcommit=2")
	if err != nil {
		t.Fatal(err)
	}
	d, err := Derive(c, Host{CPUs: 2, RAMKiB: 6 << 20})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	tcs := got["toolchains"].([]any)
	tc := tcs[0].(map[string]any)
	for _, k := range []string{"name", "cpus", "ram_kib", "instances", "nice", "bridge", "controllers", "controller_trust", "toolchain_url", "toolchain_trust"} {
		if _, ok := tc[k]; !ok {
			t.Errorf("toolchain JSON lacks %q: %s", k, b)
		}
	}
	if tc["cpus"] != 4.0 || got["cpu_overcommit"] != "2" || got["ram_reserved_gb"] != 4.0 {
		t.Errorf("JSON %s: want cpus 4, cpu_overcommit \"2\", ram_reserved_gb 4", b)
	}
}

// FuzzParseCmdline: any line parses or fails with an error; a parsed
// configuration holds only valid values.
func FuzzParseCmdline(f *testing.F) {
	f.Add(`buildos.toolchain_url=http://h/t buildos.controller_url=http://c/ buildos.ssh_key="ssh-rsa AAA x" buildos.nice.a=3`)
	f.Add(`buildos.cpu_overcommit=3/2 "buildos.x=a b" buildos.bridge.z=br0`)
	f.Add(`"`)
	f.Fuzz(func(t *testing.T, line string) {
		c, err := ParseCmdline(line)
		if err != nil {
			return
		}
		for _, tc := range c.Toolchains {
			if strings.Contains(tc.Name, "-") || tc.Nice < -20 || tc.Nice > 19 || tc.Instances < 1 || tc.URL == "" || len(tc.Controllers) == 0 {
				t.Errorf("ParseCmdline(%q) gave a bad toolchain %+v", line, tc)
			}
		}
		if c.CPUOvercommit.Den <= 0 || c.RAMOvercommit.Den <= 0 {
			t.Errorf("ParseCmdline(%q): bad ratio", line)
		}
		if _, err := Derive(c, Host{CPUs: 4, RAMKiB: 16 << 20}); err != nil && !strings.Contains(err.Error(), "reserved") {
			t.Errorf("Derive after ParseCmdline(%q): %v", line, err)
		}
	})
}

func FuzzParseFile(f *testing.F) {
	f.Add("toolchain_url=http://h/t\ncontroller_url=http://c/\n# x\nbuildos.nice=1\n")
	f.Fuzz(func(t *testing.T, in string) {
		c, err := ParseFile("f", strings.NewReader(in))
		if err == nil && c == nil {
			t.Errorf("ParseFile(%q): nil configuration and no error", in)
		}
	})
}
