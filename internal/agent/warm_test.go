package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/image"
	"github.com/buildfarm/buildfarm/internal/machine"
	"github.com/buildfarm/buildfarm/internal/manifest"
)

// identityTask writes a task whose one step prints 32 random bytes, the
// guest's clock and its network (lo's flags, whether the NIC has IPv6,
// the default route: the worker sets the last in the background), and
// returns its file.
func identityTask(t *testing.T) string {
	t.Helper()
	task := manifest.Task{Name: "identity", Version: "1.0.0", RepositoryURL: "https://example.org/identity.git",
		Machine: "busybox", Target: "x86_64-linux-gnu",
		Steps: []manifest.Step{{Operation: "configure",
			Command: `echo "random=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"; echo "clock=$(date +%s)"; echo "net=$(cat /sys/class/net/lo/flags) ipv6off=$(cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6) $(ip route show default)"`}}}
	f := filepath.Join(t.TempDir(), "task.manifest")
	if err := manifest.WriteFile(f, []manifest.Manifest{task.Manifest()}); err != nil {
		t.Fatal(err)
	}
	return f
}

var (
	randomRE = regexp.MustCompile(`random=([0-9a-f]{64})\n`)
	netRE    = regexp.MustCompile(`net=0x9 ipv6off=1 default via 10\.0\.2\.2 dev eth0`)
	clockRE  = regexp.MustCompile(`clock=([0-9]+)\n`)
)

// runIdentity runs the identity task and returns its result, the random
// bytes the guest read and how far its clock was from the host's when the
// step ran (as the host saw the step start: the agent's log of the
// worker's progress report).
func runIdentity(t *testing.T, f *farm, o Options) (res *manifest.Result, random string, skew time.Duration) {
	t.Helper()
	mark := len(f.log.String())
	out, err := f.run(t, o)
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	res = parseResult(t, out)
	if res.Status != manifest.StatusSuccess {
		t.Fatalf("identity task: %v:\n%s", res.Status, out)
	}
	log := res.Results[0].Log
	r, c := randomRE.FindStringSubmatch(log), clockRE.FindStringSubmatch(log)
	if r == nil || c == nil {
		t.Fatalf("identity task's log %q: no random bytes or clock", log)
	}
	if !netRE.MatchString(log) {
		t.Errorf("identity task's log %q: want lo up (flags 0x9), IPv6 off on eth0 and the default route (%s)", log, netRE)
	}
	guest, _ := strconv.ParseInt(c[1], 10, 64)
	started := regexp.MustCompile(`time=(\S+) level=INFO msg=guest .*step=configure state=started`).FindStringSubmatch(f.log.String()[mark:])
	if started == nil {
		t.Fatalf("no progress report of the step in the agent's log")
	}
	host, err := time.Parse(time.RFC3339Nano, started[1])
	if err != nil {
		t.Fatal(err)
	}
	return res, r[1], time.Unix(guest, 0).Sub(host.Truncate(time.Second))
}

// since returns the agent's log from mark on.
func since(f *farm, mark int) string { return f.log.String()[mark:] }

// TestWarmStart: two tasks in a row restored from the busybox machine's
// warm state get different random bytes and the host's time (without the
// worker's start the clock lags by the time since the save and fails
// this; the random bytes differ even then, since the guest kernel, 6.1,
// reseeds its generator on its own a few seconds after boot, which the
// restored guests pass with different interrupt timing: the worker's
// ioctls are checked by worker.TestAddEntropy); a corrupt
// state file, a corrupt RAM file and another memory size each give a cold
// boot that says why
// and a state built again; an upgraded machine's next task does not
// restore the old state; a removed machine's state goes with it.
func TestWarmStart(t *testing.T) {
	f := newFarm(t, true, image.Options{})
	o := f.options()
	o.Start = StartAuto
	o.FakeRequest, o.DumpResult = identityTask(t), true

	// Two tasks in a row, warm: the first run bootstraps and builds the
	// state.
	res1, rnd1, skew1 := runIdentity(t, f, o)
	if !strings.Contains(f.log.String(), "warm state built") || res1.Start != StartWarm {
		t.Fatalf("first task started %q, want warm after the state was built", res1.Start)
	}
	time.Sleep(3 * time.Second) // a restored clock would lag by this much
	mark := len(f.log.String())
	res2, rnd2, skew2 := runIdentity(t, f, o)
	if res2.Start != StartWarm || strings.Contains(since(f, mark), "warm state built") {
		t.Fatalf("second task started %q, want warm from the same state", res2.Start)
	}
	t.Logf("warm tasks: random %s and %s, clocks off the host's by %v and %v", rnd1[:16], rnd2[:16], skew1, skew2)
	if rnd1 == rnd2 {
		t.Errorf("both restored guests read the same random bytes %s", rnd1)
	}
	for _, s := range []time.Duration{skew1, skew2} {
		if s < -2*time.Second || s > 2*time.Second {
			t.Errorf("guest clocks off the host's by %v and %v, want within 2 s", skew1, skew2)
			break
		}
	}
	store := &machine.Store{Dir: f.machines}
	v, err := store.Volume(machine.DefaultVolume, false)
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{opts: o}
	files := a.warmFilesOf(v, "busybox")
	fi, err := os.Stat(files.state)
	if err != nil || fi.Size() > 4<<20 {
		t.Errorf("state file %s: %v, want the devices' state alone, under 4 MiB", files.state, err)
	}
	ri, err := os.Stat(files.ram)
	if err != nil || ri.Size() != int64(o.MemoryMB)<<20 {
		t.Errorf("RAM file %s: %v, want the guest's %d MiB", files.ram, err, o.MemoryMB)
	}
	if ki, err := os.Stat(files.kernel); err != nil || ki.Size() > 1<<20 {
		t.Errorf("restore kernel %s: %v, want the bzImage's header and setup, under 1 MiB", files.kernel, err)
	}
	onDisk := diskUsage(files.state) + diskUsage(files.ram)
	if ws := WarmStates(v.Dir, "busybox"); len(ws) != 1 || ws[0].Toolchain != "default" || ws[0].Bytes != onDisk || onDisk < 1<<20 || onDisk >= ri.Size() {
		t.Errorf("WarmStates (machine list) = %+v, want the default toolchain's state, %d bytes on disk, less than the memory (a sparse RAM file)", ws, onDisk)
	}

	// A corrupt state file: a cold boot that says why, then a new state.
	fh, err := os.OpenFile(files.state, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fh.WriteAt([]byte(strings.Repeat("garbage!", 512)), 0)
	fh.Close()
	mark = len(f.log.String())
	res, _, _ := runIdentity(t, f, o)
	if log := since(f, mark); res.Start != StartCold || !strings.Contains(log, "changed since it was saved") || !strings.Contains(log, "warm start failed") {
		t.Errorf("task with a corrupt state started %q, want cold, and a log saying why:\n%s", res.Start, log)
	}
	mark = len(f.log.String())
	if res, _, _ = runIdentity(t, f, o); res.Start != StartWarm || !strings.Contains(since(f, mark), "warm state built") {
		t.Errorf("next task started %q, want warm from a state built again", res.Start)
	}

	// A RAM file scribbled over: the same.
	fh, err = os.OpenFile(files.ram, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fh.WriteAt([]byte(strings.Repeat("garbage!", 512)), 0)
	fh.Close()
	mark = len(f.log.String())
	res, _, _ = runIdentity(t, f, o)
	if log := since(f, mark); res.Start != StartCold || !strings.Contains(log, "RAM file") || !strings.Contains(log, "changed since it was saved") {
		t.Errorf("task with a corrupt RAM file started %q, want cold, and a log saying why:\n%s", res.Start, log)
	}
	mark = len(f.log.String())
	if res, _, _ = runIdentity(t, f, o); res.Start != StartWarm || !strings.Contains(since(f, mark), "warm state built") {
		t.Errorf("next task started %q, want warm from a state built again", res.Start)
	}

	// Another memory size: the same.
	o.MemoryMB = 320
	mark = len(f.log.String())
	res, _, _ = runIdentity(t, f, o)
	if log := since(f, mark); res.Start != StartCold || !strings.Contains(log, `memory is \"320\" now, the state was saved with \"256\"`) {
		t.Errorf("task with --ram 320 started %q, want cold, and a log saying why:\n%s", res.Start, log)
	}
	mark = len(f.log.String())
	if res, _, _ = runIdentity(t, f, o); res.Start != StartWarm || !strings.Contains(since(f, mark), "warm state built") {
		t.Errorf("next task started %q, want warm from a state built again", res.Start)
	}

	// An upgrade: the old state is dropped before the bootstrap, and the
	// task restores a state of the new revision.
	_, cur, err := v.Current("busybox")
	if err != nil {
		t.Fatal(err)
	}
	r2 := filepath.Join(t.TempDir(), "r2")
	if out, err := exec.Command("cp", "-a", "--reflink=auto", cur, r2).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	exec.Command("chmod", "-R", "u+w", r2).Run()
	ms, err := manifest.ReadFile(filepath.Join(r2, machine.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	m := ms.Manifest(0)
	for i, p := range m {
		if p.Name == "id" {
			m[i].Value += "-r2"
		}
	}
	if err := manifest.WriteFile(filepath.Join(r2, machine.ManifestFile), []manifest.Manifest{m}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Upgrade(context.Background(), "busybox", machine.Source{Dir: r2}); err != nil {
		t.Fatal(err)
	}
	mark = len(f.log.String())
	res, _, _ = runIdentity(t, f, o)
	log := since(f, mark)
	if !strings.Contains(log, "warm state deleted") || !strings.Contains(log, "bootstrapping again") || !strings.Contains(log, "warm state built") {
		t.Errorf("after the upgrade: the old state was not dropped and a new one built:\n%s", log)
	}
	key, err := manifest.ReadFile(files.key)
	if err != nil || !strings.Contains(fmt.Sprint(key.Manifests()), "-r2") {
		t.Errorf("warm key after the upgrade %v, %v; want the new revision's id", key, err)
	}
	if res.Start != StartWarm {
		t.Errorf("task after the upgrade started %q, want warm from the new state", res.Start)
	}

	// Removal takes the warm machine and state with the machine.
	if err := v.Remove(context.Background(), "busybox", nil); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{files.dir, files.ram, files.kernel, files.state, files.key} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s left after the machine's removal", p)
		}
	}
}

// TestRestoreKernel checks the part of each kind of kernel that a
// restore gets: a bzImage's header and setup sectors, an arm64 Image's
// first 4 KiB, and nothing of another file.
func TestRestoreKernel(t *testing.T) {
	dir := t.TempDir()
	bz := make([]byte, 64<<10)
	copy(bz[0x202:], "HdrS")
	bz[0x1f1] = 3 // setup sectors: the part is 4 sectors
	arm := make([]byte, 64<<10)
	binary.LittleEndian.PutUint64(arm[16:], 1<<20) // image_size
	copy(arm[56:], "ARM\x64")
	noSize := bytes.Clone(arm)
	binary.LittleEndian.PutUint64(noSize[16:], 0) // an old Image: QEMU sizes it by the file
	for _, tt := range []struct {
		name   string
		kernel []byte
		want   int // bytes of the part; -1: no file
	}{
		{"bzImage", bz, 4 * 512},
		{"arm64 Image", arm, 4096},
		{"arm64 Image without image_size", noSize, -1},
		{"other", make([]byte, 64<<10), -1},
		{"short", []byte("ARM"), -1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			k, out := filepath.Join(dir, tt.name), filepath.Join(dir, tt.name+".part")
			if err := os.WriteFile(k, tt.kernel, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := restoreKernel(k, out); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(out)
			switch {
			case tt.want < 0 && err == nil:
				t.Errorf("restoreKernel wrote %d bytes, want no file", len(b))
			case tt.want >= 0 && err != nil:
				t.Errorf("restoreKernel wrote no file: %v", err)
			case tt.want >= 0 && !bytes.Equal(b, tt.kernel[:tt.want]):
				t.Errorf("restoreKernel wrote %d bytes, want the kernel's first %d", len(b), tt.want)
			}
		})
	}
}
