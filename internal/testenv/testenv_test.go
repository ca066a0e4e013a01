package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestBtrfsLeavesNothingBehind(t *testing.T) {
	NeedVM(t)
	var mnt string
	t.Run("mount", func(t *testing.T) {
		mnt = Btrfs(t, 256<<20)
		out, err := exec.Command("findmnt", "-n", "-o", "FSTYPE", mnt).Output()
		if err != nil || strings.TrimSpace(string(out)) != "btrfs" {
			t.Fatalf("findmnt %s = %q, %v; want btrfs", mnt, out, err)
		}
		if err := os.WriteFile(mnt+"/f", []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	})
	if mnt == "" {
		t.Fatal("the mount subtest made no mount")
	}
	mounts, err := os.ReadFile("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), " "+mnt+" ") {
		t.Errorf("%s still mounted after the test's clean-up", mnt)
	}
}

// TestNeedRootFailsForVMTests runs NeedRoot as another user (nobody) in a
// helper process: with BUILDFARM_VM_TESTS=1 it must fail, not skip.
func TestNeedRootFailsForVMTests(t *testing.T) {
	if os.Getenv("BUILDFARM_TESTENV_HELPER") == "1" {
		NeedRoot(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run its helper as another user")
	}
	// The test binary's directory is root's alone: copy it where nobody
	// can run it.
	dir, err := os.MkdirTemp("", "testenv-helper")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bin, err := os.ReadFile(os.Args[0])
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "testenv.test"), bin, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range []string{"1", ""} {
		cmd := exec.Command(filepath.Join(dir, "testenv.test"), "-test.run=^TestNeedRootFailsForVMTests$", "-test.v")
		cmd.Env = append(os.Environ(), "BUILDFARM_TESTENV_HELPER=1", "BUILDFARM_VM_TESTS="+vm)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		cmd.Dir = "/"
		out, err := cmd.CombinedOutput()
		want := "--- SKIP"
		if vm == "1" {
			want = "--- FAIL"
		}
		if !strings.Contains(string(out), want) {
			t.Errorf("NeedRoot as nobody with BUILDFARM_VM_TESTS=%q: %v\n%s\nwant %s", vm, err, out, want)
		}
	}
}
