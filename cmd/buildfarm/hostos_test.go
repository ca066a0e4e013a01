package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestHostOSConfig: the DESIGN contract, the manual's example through the
// command line.
func TestHostOSConfig(t *testing.T) {
	line := "buildos.cpu_overcommit=3/2 buildos.frob=1"
	for _, n := range []string{"", ".b", ".c"} {
		line += " buildos.toolchain_url" + n + "=http://h/t.sha256 buildos.controller_url" + n + "=http://c/"
	}
	out, errOut, code := runCmd(t, "hostos", "config", "--cmdline", line, "--cpus", "8", "--ram-gb", "16")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var d struct {
		Toolchains []struct {
			Name   string
			CPUs   int   `json:"cpus"`
			RAMKiB int64 `json:"ram_kib"`
			Bridge string
		}
		CPUOvercommit string `json:"cpu_overcommit"`
	}
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(d.Toolchains) != 3 || d.CPUOvercommit != "3/2" {
		t.Fatalf("config = %s", out)
	}
	for _, tc := range d.Toolchains {
		if tc.CPUs != 4 || tc.RAMKiB != 4<<20 || tc.Bridge != "br1" {
			t.Errorf("toolchain %+v, want 4 CPUs, 4 GiB, br1", tc)
		}
	}
	if !strings.Contains(errOut, "unknown parameter buildos.frob") {
		t.Errorf("no warning about buildos.frob: %s", errOut)
	}
	_, errOut, code = runCmd(t, "hostos", "config", "--cmdline", "buildos.nice=99")
	if code != 1 || !strings.Contains(errOut, "buildos.nice:") {
		t.Errorf("a bad value: exit %d, %s; want 1 naming buildos.nice", code, errOut)
	}
}
