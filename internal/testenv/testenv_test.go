package testenv

import (
	"os"
	"os/exec"
	"strings"
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
	mounts, _ := os.ReadFile("/proc/mounts")
	if strings.Contains(string(mounts), mnt) {
		t.Errorf("%s still mounted after the test's clean-up", mnt)
	}
}
