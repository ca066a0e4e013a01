package worker

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// TestStepsRunAsStepUser checks, as root, that a step runs as the steps'
// user, in a build directory that is theirs, and cannot read the
// worker's environment or memory; and that an artifacts directory the
// step replaced with a link to the worker's files uploads nothing.
func TestStepsRunAsStepUser(t *testing.T) {
	testenv.NeedRoot(t)
	session := t.TempDir()
	w := testWorker(t, agentSide(t, session), ModeBuild)
	w.cfg.StepUID, w.cfg.StepGID = StepUID, StepGID
	// The step's user must reach the build directory.
	for d := w.cfg.Dir; d != "/"; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o001 == 0 {
			os.Chmod(d, fi.Mode().Perm()|0o001)
		}
	}
	src := filepath.Join(w.cfg.Dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(w.artifacts(), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := w.giveDir(); err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(os.Getpid())
	cmd := "id -u; id -g; touch $BUILDFARM_DIR/mine && echo wrote; " +
		"cat /proc/" + pid + "/environ >/dev/null 2>&1 && echo READ-ENVIRON; " +
		"head -c 1 /proc/" + pid + "/mem >/dev/null 2>&1 && echo READ-MEM; " +
		"rmdir $BUILDFARM_ARTIFACTS && ln -s /proc/" + pid + " $BUILDFARM_ARTIFACTS && echo linked"
	r := w.runStep(t.Context(), manifest.Step{Operation: "test", Command: cmd}, src, &manifest.Task{Target: "x86_64-linux-gnu"}, nil)
	lines := strings.Split(r.Log, "\n")
	if r.Status != manifest.StatusSuccess || len(lines) < 5 || lines[1] != strconv.Itoa(StepUID) || lines[2] != strconv.Itoa(StepGID) || lines[3] != "wrote" {
		t.Fatalf("step %v, log:\n%s\nwant it run as %d:%d, writing in its directory", r.Status, r.Log, StepUID, StepGID)
	}
	for _, bad := range []string{"READ-ENVIRON", "READ-MEM"} {
		if strings.Contains(strings.Join(lines[1:], "\n"), bad) {
			t.Errorf("the step could read the worker's process: %s", bad)
		}
	}
	if !strings.Contains(r.Log, "linked") {
		t.Fatalf("the step could not replace its artifacts directory: %s", r.Log)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(w.cfg.Dir, "mine"), &st); err != nil || st.Uid != StepUID {
		t.Errorf("the step's file: uid %d (%v), want %d", st.Uid, err, StepUID)
	}
	w.putArtifacts(t.Context())
	if got, _ := filepath.Glob(filepath.Join(session, "put", ArtifactPrefix+"*")); len(got) > 0 {
		t.Errorf("a linked artifacts directory was uploaded: %v", got)
	}
}

// TestStepTrust checks that the task's trust reaches the steps as
// $BUILDFARM_TRUST.
func TestStepTrust(t *testing.T) {
	w := testWorker(t, agentSide(t, t.TempDir()), ModeBuild)
	task := &manifest.Task{Target: "x86_64-linux-gnu", Trust: []string{"yes", "AA:BB"}}
	r := w.runStep(t.Context(), manifest.Step{Operation: "test", Command: `echo "trust=$BUILDFARM_TRUST"`}, t.TempDir(), task, nil)
	if !strings.Contains(r.Log, "trust=yes AA:BB\n") {
		t.Errorf("step log %q, want $BUILDFARM_TRUST with the task's trust", r.Log)
	}
}
