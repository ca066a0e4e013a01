package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/buildfarm/buildfarm/internal/image"
	"github.com/buildfarm/buildfarm/internal/manifest"
)

// TestAbnormalNamesRunningOperation checks that an abnormal result names
// the operation the worker last reported started, when the task has it,
// and the task's first otherwise.
func TestAbnormalNamesRunningOperation(t *testing.T) {
	task := &manifest.Task{Name: "hello", Version: "1.0.0", Steps: []manifest.Step{
		{Operation: "configure", Command: "true"}, {Operation: "update", Command: "sleep 600"}}}
	s := &session{}
	s.started(3, "configure")
	s.started(5, "update")
	s.started(4, "configure") // an older report, processed late
	for _, tt := range []struct {
		err  error
		want string
	}{
		{s.abnormal(ErrTimeout), "update"},
		{(&session{}).abnormal(ErrTimeout), "configure"},
		{&abnormalEnd{op: "sources", err: ErrTimeout}, "configure"},
		{&abnormalEnd{op: "install", err: ErrTimeout}, "configure"}, // not the task's
		{ErrTimeout, "configure"},
	} {
		res := abnormalResult(task, tt.err)
		if got := res.Results[0].Operation; got != tt.want || res.Status != manifest.StatusAbnormal || !errors.Is(tt.err, ErrTimeout) {
			t.Errorf("abnormalResult(%#v) names %s, want %s", tt.err, got, tt.want)
		}
	}
}

// forgeScript is a step that tries, by every name it can see, to have the
// agent take a result of its own making, then fails: from the guest, over
// TFTP, as the worker does; and by looking for the result key in the
// worker's environment, command line and memory, and on the disk.
const forgeScript = `id
addr=$(sed -n 's/.*buildfarm\.tftp=\([^ ]*\).*/\1/p' /proc/cmdline)
host=${addr%:*}
port=${addr##*:}
printf ': 1\nname: forge\nversion: 1.0.0\nstatus: success\n' >forged
for n in result.manifest /result.manifest result-.manifest ../put/result.manifest put/result.manifest result; do
	tftp -p -l forged -r "$n" "$host" "$port" && echo "UPLOADED $n"
done
tftp -g -l key -r key "$host" "$port" && echo "FETCHED KEY"
keys=""
for p in /proc/[0-9]*; do
	cat "$p/environ" 2>/dev/null | grep -q . && [ "$(stat -c %u "$p")" = 0 ] && echo "READ ENVIRON OF ROOT $p"
	head -c 1 "$p/mem" >/dev/null 2>&1 && [ "$(stat -c %u "$p")" = 0 ] && echo "READ MEM OF ROOT $p"
	keys="$keys $(cat "$p/cmdline" 2>/dev/null | tr '\0' ' ' | grep -o '[0-9a-f]\{64\}')"
done
keys="$keys $(cat key 2>/dev/null) $(grep -rho '[0-9a-f]\{64\}' /build /tmp /etc 2>/dev/null)"
for k in $keys; do
	tftp -p -l forged -r "result-$k.manifest" "$host" "$port" && echo "UPLOADED KEYED $k"
done
echo "tried: $(echo $keys | wc -w) candidate keys"
exit 1
`

// TestStepCannotForgeResult is issue 13's "a build step can forge the
// build's result": a step that tries every way it has to upload a result
// that says success, and then fails, gets the build an error result with
// its own log, never the forgery.
func TestStepCannotForgeResult(t *testing.T) {
	f := newFarm(t, false, image.Options{})
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "forge.sh"), []byte(forgeScript), 0o755)
	os.WriteFile(filepath.Join(dir, "task.manifest"), []byte(`: 1
name: forge
version: 1.0.0
repository-url: https://example.org/forge.git
machine: busybox
target: x86_64-linux-gnu
buildfarm-archive: forge.tar.gz
buildfarm-configure: sh ./forge.sh
`), 0o644)
	o := f.options()
	o.FakeRequest, o.DumpResult = filepath.Join(dir, "task.manifest"), true
	out, err := f.run(t, o)
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	res := parseResult(t, out)
	if res.Status != manifest.StatusError || len(res.Results) != 1 || res.Results[0].Status != manifest.StatusError {
		t.Fatalf("result %v %+v, want error from the step", res.Status, res.Results)
	}
	log := res.Results[0].Log
	t.Logf("the step's log:\n%s", log)
	if !strings.Contains(log, "uid=1000(build)") || !strings.Contains(log, "candidate keys") || !strings.Contains(log, "exit status 1") {
		t.Errorf("the step did not run as the build user to its end; log:\n%s", log)
	}
	for _, bad := range []string{"UPLOADED", "FETCHED KEY", "READ ENVIRON", "READ MEM"} {
		if strings.Contains(log, bad) {
			t.Errorf("the step %s; log:\n%s", strings.ToLower(bad), log)
		}
	}
	checkNothingLeft(t, f)
}
