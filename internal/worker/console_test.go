package worker

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadProcStaysInProc(t *testing.T) {
	if s, err := readProc("uptime"); err != nil || len(strings.Fields(s)) != 2 {
		t.Errorf(`readProc("uptime") = %q, %v; want two numbers`, s, err)
	}
	if s, err := readProc("/proc/self/status"); err != nil || !strings.Contains(s, "Pid:") {
		t.Errorf(`readProc("/proc/self/status") = %.40q, %v; want the status`, s, err)
	}
	for _, name := range []string{"", "../etc/passwd", "/etc/passwd", "self/root/etc/passwd", "self/cwd/x", "self/../../etc/passwd"} {
		if s, err := readProc(name); err == nil {
			t.Errorf("readProc(%q) = %.40q, nil; want it refused", name, s)
		}
	}
}

func TestFindPort(t *testing.T) {
	sys := t.TempDir()
	for port, name := range map[string]string{"vport0p1": ConsolePort, "vport0p2": NotifyPort} {
		os.MkdirAll(filepath.Join(sys, port), 0o755)
		os.WriteFile(filepath.Join(sys, port, "name"), []byte(name+"\n"), 0o644)
	}
	if got, err := FindPort(sys, "/dev", NotifyPort); err != nil || got != "/dev/vport0p2" {
		t.Errorf("FindPort(%s) = %q, %v; want /dev/vport0p2", NotifyPort, got, err)
	}
	if _, err := FindPort(sys, "/dev", "org.example.none"); err == nil {
		t.Error("FindPort of a missing port = nil error")
	}
	if _, err := FindPort(filepath.Join(sys, "nothing"), "/dev", ConsolePort); err == nil || !strings.Contains(err.Error(), "virtio_console") {
		t.Errorf("FindPort without the class = %v, want an error naming virtio_console", err)
	}
}
