package main

import (
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/buildfarm/buildfarm/internal/machine"
	"github.com/buildfarm/buildfarm/internal/machine/machinetest"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// listedIDs runs `machine list` and returns the ids of the headers.
func listedIDs(t *testing.T, machines string) []string {
	t.Helper()
	out, errOut, code := runManifest(t, "", "machine", "list", "--machines", machines)
	if code != 0 {
		t.Fatalf("machine list: exit %d: %s", code, errOut)
	}
	ms, err := manifest.Parse(strings.NewReader(out), "list")
	if err != nil {
		t.Fatalf("machine list printed %q: %v", out, err)
	}
	var ids []string
	for _, m := range ms.Manifests() {
		h, err := manifest.ParseMachineHeader(m, "list", manifest.Strict)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, h.ID)
	}
	return ids
}

func TestMachineCommands(t *testing.T) {
	src := t.TempDir()
	machines := filepath.Join(t.TempDir(), "machines")
	for _, m := range []struct{ dir, name, id string }{{"m1", "m", "id1"}, {"m2", "m", "id2"}, {"n1", "n", "idn"}} {
		machinetest.MakeMachine(t, filepath.Join(src, m.dir), m.name, m.id, 'a')
	}
	common := []string{"--machines", machines, "--backend", "fallback"}
	steps := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string // a regular expression for stdout
		wantErr  string // a part of stderr
		wantIDs  []string
	}{
		{"add", []string{"add", "--name", "m", filepath.Join(src, "m1")}, 0,
			`^added m: revision 1\.0 in .*/machines/default/m/m-1\.0 \(fallback backend, copy\)\n$`, "", []string{"id1"}},
		{"add again", []string{"add", "--name", "m", filepath.Join(src, "m1")}, 1, `^$`, "machine exists", []string{"id1"}},
		{"add under another name", []string{"add", "--name", "x", filepath.Join(src, "m1")}, 1, `^$`,
			`machine x: name differs from the manifest's: its manifest names machine "m"`, []string{"id1"}},
		{"add a bad name", []string{"add", "--name", "-x", filepath.Join(src, "m1")}, 1, `^$`, "", []string{"id1"}},
		{"add without a source", []string{"add", "--name", "x"}, 1, `^$`, "want SRC or --receive", []string{"id1"}},
		{"receive on ext4", []string{"add", "--name", "x", "--receive", "-"}, 1, `^$`, "not on btrfs", []string{"id1"}},
		{"upgrade", []string{"upgrade", "--name", "m", filepath.Join(src, "m2")}, 0,
			`^upgraded m: revision 1\.1 in .*/m-1\.1 `, "", []string{"id2"}},
		{"upgrade to another machine", []string{"upgrade", "--name", "m", filepath.Join(src, "n1")}, 1, `^$`,
			`its manifest names machine "n"`, []string{"id2"}},
		{"upgrade a missing machine", []string{"upgrade", "--name", "n", filepath.Join(src, "n1")}, 1, `^$`, "machine not found", []string{"id2"}},
		{"add another", []string{"add", "--volume", "v2", "--name", "n", filepath.Join(src, "n1")}, 0,
			`^added n: revision 1\.0 in .*/machines/v2/n/n-1\.0 `, "", []string{"id2", "idn"}},
		{"remove", []string{"remove", "--name", "m"}, 0, `^removed m\n$`, "", []string{"idn"}},
		{"remove again", []string{"remove", "--name", "m"}, 1, `^$`, "machine not found", []string{"idn"}},
		{"remove from another volume", []string{"remove", "--volume", "v2", "--name", "n"}, 0, `^removed n\n$`, "", nil},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			args := append(append([]string{"machine", st.args[0]}, common...), st.args[1:]...)
			out, errOut, code := runManifest(t, "", args...)
			if code != st.wantCode || !regexp.MustCompile(st.wantOut).MatchString(out) || !strings.Contains(errOut, st.wantErr) {
				t.Errorf("buildfarm %s: exit %d, stdout %q, stderr %q; want exit %d, stdout matching %q, stderr with %q",
					strings.Join(args, " "), code, out, errOut, st.wantCode, st.wantOut, st.wantErr)
			}
			if got := listedIDs(t, machines); strings.Join(got, " ") != strings.Join(st.wantIDs, " ") {
				t.Errorf("after %s machine list gives %q, want %q", st.name, got, st.wantIDs)
			}
		})
	}
}

// TestMachineRemoveWaits: remove reports the running task it waits for and
// gives up after --timeout, leaving the machine unlinked.
func TestMachineRemoveWaits(t *testing.T) {
	testenv.NeedProgram(t, "qemu-img")
	ctx := context.Background()
	src := filepath.Join(t.TempDir(), "m1")
	machinetest.MakeMachine(t, src, "m", "id1", 'a')
	machines := filepath.Join(t.TempDir(), "machines")
	if _, errOut, code := runManifest(t, "", "machine", "add", "--machines", machines, "--name", "m", src); code != 0 {
		t.Fatal(errOut)
	}
	// An agent bootstraps the machine and runs a task in it.
	s := &machine.Store{Dir: machines, Backend: machine.BackendFallback}
	want := machine.Want{ToolchainID: "tc", Versions: map[string]uint64{"buildfarm": 1}}
	cs, err := s.Enumerate(ctx, "default", want)
	if err != nil || len(cs) != 1 || cs[0].Bootstrap == nil {
		t.Fatalf("Enumerate = %v, %v", cs, err)
	}
	bm := &manifest.BootstrappedMachine{Machine: *cs[0].Machine, Toolchain: manifest.Toolchain{ID: "tc"},
		Bootstrap: manifest.Bootstrap{Versions: []manifest.ToolVersion{{Tool: "buildfarm", Version: 1}}}}
	if err := cs[0].Bootstrap.Commit(ctx, bm); err != nil {
		t.Fatal(err)
	}
	task, err := cs[0].Volume.SnapshotForTask(ctx, "m", "default")
	if err != nil {
		t.Fatal(err)
	}
	defer task.Delete(ctx)

	_, errOut, code := runManifest(t, "", "machine", "remove", "--machines", machines, "--name", "m", "--timeout", "1500ms")
	if code != 1 || !strings.Contains(errOut, "waiting") || !strings.Contains(errOut, filepath.Base(task.Dir)) || !strings.Contains(errOut, "deadline exceeded") {
		t.Errorf("remove with a running task: exit %d, stderr %q; want 1, waiting for %s, then a deadline", code, errOut, filepath.Base(task.Dir))
	}
	if ids := listedIDs(t, machines); len(ids) != 0 {
		t.Errorf("machine list after the timed-out remove = %q, want nothing (unlinked)", ids)
	}
	if err := task.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := runManifest(t, "", "machine", "remove", "--machines", machines, "--name", "m"); code != 0 || out != "removed m\n" {
		t.Errorf("second remove: exit %d, %q, %q", code, out, errOut)
	}
}

// TestMachineReceive adds a machine from a btrfs send stream on standard
// input, as `btrfs send ... | ssh HOST buildfarm machine add --receive -`
// does, then upgrades it with only the difference.
func TestMachineReceive(t *testing.T) {
	ctx := context.Background()
	images := machinetest.BtrfsMount(t)
	machines := filepath.Join(machinetest.BtrfsMount(t), "machines")
	img1, img2 := filepath.Join(images, "img-1"), filepath.Join(images, "img-2")
	run := func(name string, args ...string) []byte {
		out, err := proc.Output(ctx, name, args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	run("btrfs", "subvolume", "create", img1)
	machinetest.MakeMachine(t, img1, "m", "id1", 'a')
	run("btrfs", "property", "set", "-ts", img1, "ro", "true")
	run("btrfs", "subvolume", "snapshot", img1, img2)
	machinetest.MakeMachine(t, img2, "m", "id2", 'b')
	run("btrfs", "property", "set", "-ts", img2, "ro", "true")

	stream := run("btrfs", "send", "-q", img1)
	out, errOut, code := runManifest(t, string(stream), "machine", "add", "--machines", machines, "--name", "m", "--receive", "-")
	if code != 0 || !strings.Contains(out, "revision 1.0") || !strings.Contains(out, "(btrfs backend, btrfs receive (") {
		t.Fatalf("add --receive -: exit %d, %q, %q", code, out, errOut)
	}
	out, errOut, code = runManifest(t, "", "machine", "upgrade", "--machines", machines, "--name", "m", "--incremental", img1, img2)
	if code != 0 || !strings.Contains(out, "revision 1.1") || !strings.Contains(out, "btrfs send -p | receive (") {
		t.Fatalf("upgrade --incremental: exit %d, %q, %q", code, out, errOut)
	}
	if ids := listedIDs(t, machines); strings.Join(ids, " ") != "id2" {
		t.Errorf("machine list = %q, want id2", ids)
	}
	if _, errOut, code := runManifest(t, "", "machine", "remove", "--machines", machines, "--name", "m"); code != 0 {
		t.Fatal(errOut)
	}
}
