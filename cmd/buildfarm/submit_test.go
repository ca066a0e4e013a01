package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/buildfarm/buildfarm/internal/testenv"
)

const cliBuildtab = "busybox* bb x86_64-linux-gnu\ndebian-* deb x86_64-linux-gnu full\n"

// TestSubmitAndStatus submits examples/hello from its directory and from a
// git repository through a real controller, and lists them.
func TestSubmitAndStatus(t *testing.T) {
	testenv.NeedProgram(t, "git")
	dir := t.TempDir()
	bt := filepath.Join(dir, "buildtab")
	os.WriteFile(bt, []byte(cliBuildtab), 0o644)
	url, log := startController(t, filepath.Join(dir, "db"), "--buildtab", bt)
	tmpl := filepath.Join("..", "..", "examples", "hello", "task.manifest")

	out, errOut, code := runCmd(t, "submit", "--controller", url, "--template", tmpl, "--dir", filepath.Join("..", "..", "examples", "hello"))
	first, _, _ := strings.Cut(out, "\n")
	id1, err := strconv.ParseInt(first, 10, 64)
	if code != 0 || err != nil || !strings.Contains(out, "bb") || !strings.Contains(out, "queued") {
		t.Fatalf("submit --dir = %d %q %s, want the id then the task of bb; log:\n%s", code, out, errOut, log.String())
	}

	repo := filepath.Join(dir, "repo")
	src := filepath.Join("..", "..", "examples", "hello")
	git := func(args ...string) {
		cmd := exec.Command("git", args...)
		cmd.Dir = repo
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, b)
		}
	}
	os.MkdirAll(repo, 0o755)
	git("init", "-q", "-b", "main")
	entries, _ := os.ReadDir(src)
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(src, e.Name()))
		os.WriteFile(filepath.Join(repo, e.Name()), b, 0o644)
	}
	git("add", ".")
	git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "hello")
	out, errOut, code = runCmd(t, "submit", "--controller", url, "--template", tmpl, "--git", repo, "--rev", "main",
		"--config", "all", "--name", "hello-git", "--version", "2.0.0", "--priority", "5")
	first, _, _ = strings.Cut(out, "\n")
	id2, err := strconv.ParseInt(first, 10, 64)
	if code != 0 || err != nil || id2 == id1 || strings.Count(out, "task ") != 2 {
		t.Fatalf("submit --git = %d %q %s, want a new id and two tasks", code, out, errOut)
	}

	out, _, code = runCmd(t, "status", "--controller", url)
	if code != 0 || !strings.Contains(out, "hello-git") || !strings.Contains(out, "0/2") || !strings.Contains(out, "0/1") {
		t.Errorf("status = %d\n%s\nwant both submissions with their task counts", code, out)
	}
	out, _, code = runCmd(t, "status", "--controller", url, strconv.FormatInt(id2, 10))
	if code != 0 || !strings.Contains(out, "hello-git 2.0.0, priority 5") || !strings.Contains(out, "deb") || !strings.Contains(out, repo) {
		t.Errorf("status %d = %d\n%s\nwant the submission from %s and its tasks", id2, code, out, repo)
	}
	out, _, code = runCmd(t, "status", "--controller", url, "--json", strconv.FormatInt(id1, 10))
	if code != 0 || !strings.Contains(out, `"name": "hello"`) || !strings.Contains(out, `"state": "queued"`) {
		t.Errorf("status --json = %d\n%s", code, out)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--template", tmpl}, "one of --dir, --archive, --git"},
		{[]string{"--template", tmpl, "--git", repo}, "--git and --rev go together"},
		{[]string{"--template", tmpl, "--dir", src, "--config", "nope"}, `configuration "nope"`},
		{[]string{"--template", filepath.Join(dir, "missing"), "--dir", src}, "template:"},
		{[]string{"--template", tmpl, "--archive", bt}, "not gzip"},
	} {
		_, errOut, code := runCmd(t, append([]string{"submit", "--controller", url}, c.args...)...)
		if code == 0 || !strings.Contains(errOut, c.want) {
			t.Errorf("submit %v = %d %q, want an error saying %q", c.args, code, errOut, c.want)
		}
	}
	if _, errOut, code := runCmd(t, "status", "--controller", url, "999"); code == 0 || !strings.Contains(errOut, "404") {
		t.Errorf("status 999 = %d %q, want not found", code, errOut)
	}
}
