package main

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/vmrecord"
)

func TestVMList(t *testing.T) {
	dir := t.TempDir()
	if stdout, _, code := runManifest(t, "", "vm", "list", "--registry", dir); code != 0 || !strings.Contains(stdout, "no VMs recorded") {
		t.Errorf("vm list of an empty registry: exit %d, %q", code, stdout)
	}
	g := vmrecord.Registry{Dir: dir}
	since := time.Now().Add(-time.Hour)
	if err := g.Write(vmrecord.Record{Name: "busybox-default-x1", Machine: "busybox", Task: "hello/1.0.0", State: vmrecord.Suspended,
		Since: since, Why: "build timeout after 3h; serial console:\nlast line of the guest", PID: 0, SerialLog: "/d/serial.log", Serial: "/d/serial.sock"}); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := runManifest(t, "", "vm", "list", "--registry", dir)
	if code != 0 {
		t.Fatalf("vm list: exit %d: %s", code, stderr)
	}
	for _, re := range []string{
		`(?m)^NAME +MACHINE +TASK +STATE +SINCE +WHY$`,
		// Its QEMU does not run (pid 0): gone, not suspended.
		`(?m)^busybox-default-x1 +busybox +hello/1\.0\.0 +gone +` + regexp.QuoteMeta(since.UTC().Format(time.RFC3339)) + ` \(1h0m\d+s ago\) +build timeout after 3h; serial console:$`,
		`(?m)^    buildfarm console busybox-default-x1 go$`,
		`(?m)^    buildfarm console busybox-default-x1 attach$`,
		`(?m)^    less /d/serial\.log$`,
	} {
		if !regexp.MustCompile(re).MatchString(stdout) {
			t.Errorf("vm list output does not match %s:\n%s", re, stdout)
		}
	}
	if strings.Contains(stdout, "last line of the guest") {
		t.Errorf("vm list shows more than the first line of why, breaking its table:\n%s", stdout)
	}
}
