package controller

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/buildfarm/buildfarm/internal/manifest"
)

func TestParseBuildtab(t *testing.T) {
	bt, err := ParseBuildtab(strings.NewReader(`
# comment
busybox*   bb    x86_64-linux-gnu

  debian-*  deb  x86_64-linux-gnu  full  default full
arm-?      arm   aarch64-linux-gnu nightly
`), "bt")
	if err != nil {
		t.Fatal(err)
	}
	want := []Config{
		{MachinePattern: "busybox*", Name: "bb", Target: "x86_64-linux-gnu", Classes: []string{"default"}},
		{MachinePattern: "debian-*", Name: "deb", Target: "x86_64-linux-gnu", Classes: []string{"full", "default"}},
		{MachinePattern: "arm-?", Name: "arm", Target: "aarch64-linux-gnu", Classes: []string{"nightly"}},
	}
	if diff := cmp.Diff(want, bt.Configs); diff != "" {
		t.Errorf("ParseBuildtab: (-want +got)\n%s", diff)
	}
	for _, c := range []struct {
		names []string
		want  []string
	}{
		{nil, []string{"bb", "deb"}},
		{[]string{"arm"}, []string{"arm"}},
		{[]string{"nightly", "bb"}, []string{"bb", "arm"}},
		{[]string{"all"}, []string{"bb", "deb", "arm"}},
		{[]string{"full", "deb"}, []string{"deb"}},
	} {
		cs, err := bt.Select(c.names)
		var got []string
		for _, c := range cs {
			got = append(got, c.Name)
		}
		if err != nil || !cmp.Equal(got, c.want) {
			t.Errorf("Select(%q) = %v, %v; want %v", c.names, got, err, c.want)
		}
	}
	if _, err := bt.Select([]string{"bb", "nope"}); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("Select(nope) = %v, want an error naming it", err)
	}
	got := bt.Machines(headers("alpine", "debian-12", "busybox-2", "busybox", "arm-7"))
	if diff := cmp.Diff(map[string]string{"bb": "busybox-2", "deb": "debian-12", "arm": "arm-7"}, got); diff != "" {
		t.Errorf("Machines: (-want +got)\n%s", diff)
	}
	// A machine that says its architecture gets only its targets.
	hs := headers("busybox-arm", "busybox", "arm-1", "arm-2")
	hs[0].Arch, hs[1].Arch, hs[2].Arch = "aarch64", "x86_64", "x86_64"
	got = bt.Machines(hs)
	if diff := cmp.Diff(map[string]string{"bb": "busybox", "arm": "arm-2"}, got); diff != "" {
		t.Errorf("Machines with architectures: (-want +got)\n%s", diff)
	}
}

func TestParseBuildtabErrors(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", "bt: no build configurations"},
		{"# only\n\n", "bt: no build configurations"},
		{"busybox bb\n", "bt:1: want MACHINE-PATTERN CONFIG-NAME TARGET [CLASS...], got 2 field(s)"},
		{"\nbusybox [ x86_64-linux-gnu\n", `bt:2: configuration name "["`},
		{"busy[box bb x86_64-linux-gnu\n", `bt:1: machine pattern "busy[box": syntax error in pattern`},
		{"a bb x86_64-linux-gnu\nb bb x86_64-linux-gnu\n", `bt:2: configuration "bb": defined again (first on line 1)`},
		{"a bb x86_64\n", `bt:1: target "x86_64": not a target triplet`},
		{"a all x86_64-linux-gnu\n", `bt:1: configuration name "all": reserved`},
		{"a bb x86_64-linux-gnu -x\n", `bt:1: class "-x"`},
	} {
		_, err := ParseBuildtab(strings.NewReader(c.in), "bt")
		if err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("ParseBuildtab(%q) = %v, want an error starting %q", c.in, err, c.want)
		}
	}
}

func FuzzParseBuildtab(f *testing.F) {
	f.Add(testBuildtab)
	f.Add("a* b x-y-z c d\n# x\n\n")
	f.Add("[ b x-y-z\n")
	f.Fuzz(func(t *testing.T, in string) {
		bt, err := ParseBuildtab(strings.NewReader(in), "fuzz")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz") {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		// What parses selects and matches without failing, and every
		// configuration is in some class and in "all".
		all, err := bt.Select([]string{AllClass})
		if err != nil || len(all) != len(bt.Configs) {
			t.Fatalf("Select(all) = %d, %v; want %d", len(all), err, len(bt.Configs))
		}
		names := map[string]bool{}
		for _, c := range bt.Configs {
			if len(c.Classes) == 0 || names[c.Name] {
				t.Fatalf("config %+v: no class or a duplicate name", c)
			}
			names[c.Name] = true
			bt.Machines(headers(c.MachinePattern, c.Name))
		}
	})
}

func headers(names ...string) []manifest.MachineHeader {
	var hs []manifest.MachineHeader
	for _, n := range names {
		hs = append(hs, manifest.MachineHeader{ID: n + "-1.0", Name: n, Summary: n})
	}
	return hs
}
