package machine

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/buildfarm/buildfarm/internal/proc"
)

// subvolumeMachine makes a read-only subvolume holding a test machine.
func subvolumeMachine(t *testing.T, dir, name, id string, rev byte) {
	t.Helper()
	ctx := context.Background()
	if err := (btrfs{}).Create(ctx, dir); err != nil {
		t.Fatal(err)
	}
	makeMachine(t, dir, name, id, rev)
	if err := (btrfs{}).SetReadOnly(ctx, dir); err != nil {
		t.Fatal(err)
	}
}

var sentBytesRE = regexp.MustCompile(`\(([0-9]+) bytes\)$`)

// sentBytes returns the size of the stream an Installed says it received.
func sentBytes(t *testing.T, inst *Installed) int64 {
	t.Helper()
	m := sentBytesRE.FindStringSubmatch(inst.Method)
	if m == nil {
		t.Fatalf("method %q names no stream size", inst.Method)
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

// TestSendReceive adds machines from another btrfs file system (the image
// builder's, or another host's) by btrfs send and receive: whole, then only
// the difference from the previous revision, directly and through a stream
// file (what `btrfs send | ssh HOST buildfarm machine add --receive -`
// carries); and from the volume's own file system by a snapshot.
func TestSendReceive(t *testing.T) {
	ctx := context.Background()
	images := btrfsMount(t) // the image builder's file system
	s := &Store{Dir: filepath.Join(btrfsMount(t), "machines"), Log: testLogger(t)}
	v, err := s.Volume(DefaultVolume, true)
	if err != nil {
		t.Fatal(err)
	}
	img1, img2 := filepath.Join(images, "img-1"), filepath.Join(images, "img-2")
	subvolumeMachine(t, img1, "m", "id1", 'a')
	// img-2: a snapshot of img-1 with one block and the manifest changed.
	if err := proc.Run(ctx, nil, "btrfs", "subvolume", "snapshot", img1, img2); err != nil {
		t.Fatal(err)
	}
	writeMark(t, img2, markRevision, 'b')
	rewriteManifest(t, img2, "id2")
	if err := (btrfs{}).SetReadOnly(ctx, img2); err != nil {
		t.Fatal(err)
	}

	inst, err := v.Add(ctx, "m", Source{Dir: img1})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(inst.Method, "btrfs send | receive") || sentBytes(t, inst) < diskSize {
		t.Errorf("Add from another file system: %q, want btrfs send | receive of the whole disk", inst.Method)
	}
	if ro, err := isReadOnlySubvolume(ctx, inst.Dir); err != nil || !ro {
		t.Errorf("received revision %s: read-only %v, %v", inst.Dir, ro, err)
	}
	out, err := proc.Output(ctx, "btrfs", "subvolume", "show", inst.Dir)
	if err != nil || !regexp.MustCompile(`Received UUID:\s+[0-9a-f-]{36}`).Match(out) {
		t.Errorf("received revision has no received UUID (%v):\n%s", err, out)
	}

	inst, err = v.Upgrade(ctx, "m", Source{Dir: img2, Parent: img1})
	if err != nil {
		t.Fatal(err)
	}
	if n := sentBytes(t, inst); !strings.HasPrefix(inst.Method, "btrfs send -p | receive") || n > diskSize/4 {
		t.Errorf("incremental Upgrade: %q, want btrfs send -p | receive of much less than the %d-byte disk", inst.Method, diskSize)
	}
	c := bootstrap(t, s, "m", 'B')
	if c.Machine.ID != "id2" || readMark(t, filepath.Join(v.Dir, "m", "m-default"), markRevision) != 'b' {
		t.Errorf("bootstrapped from the incremental revision: machine %s, mark %q; want id2, 'b'",
			c.Machine.ID, readMark(t, filepath.Join(v.Dir, "m", "m-default"), markRevision))
	}

	// Another host: the streams come as files (or through ssh), into a
	// volume of their own, as the manifest's machine m.
	remote, err := s.Volume("remote", true)
	if err != nil {
		t.Fatal(err)
	}
	stream1, stream2 := filepath.Join(t.TempDir(), "full"), filepath.Join(t.TempDir(), "incr")
	sendTo(t, stream1, img1)
	sendTo(t, stream2, "-p", img1, img2)
	for _, step := range []struct {
		stream string
		add    bool
		id     string
	}{{stream1, true, "id1"}, {stream2, false, "id2"}} {
		f, err := os.Open(step.stream)
		if err != nil {
			t.Fatal(err)
		}
		if step.add {
			inst, err = remote.Add(ctx, "m", Source{Stream: f})
		} else {
			inst, err = remote.Upgrade(ctx, "m", Source{Stream: f})
		}
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if m, err := readMachine(filepath.Join(inst.Dir, ManifestFile)); err != nil || m.ID != step.id {
			t.Errorf("received %s: machine %+v, %v; want id %s", inst.Dir, m, err, step.id)
		}
	}
	if got := readMark(t, filepath.Join(remote.Dir, "m", "m-1.1"), markRevision); got != 'b' {
		t.Errorf("remote m-1.1: mark %q, want 'b'", got)
	}
	if err := remote.Remove(ctx, "m", nil); err != nil {
		t.Fatal(err)
	}

	// The volume's own file system: a read-only snapshot, nothing sent.
	local := filepath.Join(filepath.Dir(s.Dir), "img-local")
	subvolumeMachine(t, local, "local", "id9", 'z')
	if inst, err = v.Add(ctx, "local", Source{Dir: local}); err != nil {
		t.Fatal(err)
	}
	if inst.Method != "btrfs snapshot" {
		t.Errorf("Add from the same file system: %q, want btrfs snapshot", inst.Method)
	}
	for _, name := range []string{"m", "local"} {
		if err := v.Remove(ctx, name, nil); err != nil {
			t.Fatal(err)
		}
	}
}

// rewriteManifest gives the machine in dir a new id.
func rewriteManifest(t *testing.T, dir, id string) {
	t.Helper()
	tmp := filepath.Join(t.TempDir(), "m")
	makeMachine(t, tmp, "m", id, 0)
	data, err := os.ReadFile(filepath.Join(tmp, ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ManifestFile), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// sendTo writes the stream of btrfs send args to the file path.
func sendTo(t *testing.T, path string, args ...string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := proc.Run(context.Background(), f, "btrfs", append([]string{"send", "-q"}, args...)...); err != nil {
		t.Fatal(err)
	}
}
