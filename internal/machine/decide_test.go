package machine

import (
	"testing"

	"github.com/buildfarm/buildfarm/internal/manifest"
)

func bootstrapped(machineID, toolchainID string, versions ...manifest.ToolVersion) *manifest.BootstrappedMachine {
	return &manifest.BootstrappedMachine{
		Machine:   manifest.Machine{ID: machineID, Name: "m", Summary: "s", Type: "kvm"},
		Toolchain: manifest.Toolchain{ID: toolchainID},
		Bootstrap: manifest.Bootstrap{Versions: versions},
	}
}

func TestDecide(t *testing.T) {
	want := Want{ToolchainID: "tc1", Versions: map[string]uint64{"buildfarm": 200, "worker": 30}}
	tv := func(tool string, v uint64) manifest.ToolVersion { return manifest.ToolVersion{Tool: tool, Version: v} }
	current := []manifest.ToolVersion{tv("buildfarm", 200), tv("worker", 30)}
	tests := []struct {
		name      string
		machineID string
		have      *manifest.BootstrappedMachine
		want      Action
	}{
		{"never bootstrapped", "m1", nil, ActionBootstrap},
		{"current", "m1", bootstrapped("m1", "tc1", current...), ActionUse},
		{"current, extra tool recorded", "m1", bootstrapped("m1", "tc1", tv("buildfarm", 200), tv("worker", 30), tv("other", 9)), ActionUse},
		{"new machine id", "m2", bootstrapped("m1", "tc1", current...), ActionBootstrap},
		{"new toolchain id", "m1", bootstrapped("m1", "tc0", current...), ActionBootstrap},
		{"older agent", "m1", bootstrapped("m1", "tc1", tv("buildfarm", 199), tv("worker", 30)), ActionBootstrap},
		{"older worker", "m1", bootstrapped("m1", "tc1", tv("buildfarm", 200), tv("worker", 29)), ActionBootstrap},
		{"tool version missing", "m1", bootstrapped("m1", "tc1", tv("buildfarm", 200)), ActionBootstrap},
		{"newer agent", "m1", bootstrapped("m1", "tc1", tv("buildfarm", 201), tv("worker", 30)), ActionIgnore},
		{"newer worker, older agent", "m1", bootstrapped("m1", "tc1", tv("buildfarm", 100), tv("worker", 31)), ActionIgnore},
		{"newer agent with a new toolchain", "m1", bootstrapped("m1", "tc2", tv("buildfarm", 300), tv("worker", 30)), ActionIgnore},
		{"newer agent on an upgraded machine", "m2", bootstrapped("m1", "tc1", tv("buildfarm", 300), tv("worker", 30)), ActionIgnore},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Decide(tt.machineID, want, tt.have)
			if got.Action != tt.want {
				t.Errorf("Decide(%q, %v, %+v) = %v (%s), want %v", tt.machineID, want, tt.have, got.Action, got.Reason, tt.want)
			}
			if got.Reason == "" {
				t.Errorf("Decide(%q, ...) gave no reason", tt.machineID)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		base string
		want entry
	}{
		{"m-x-1.0", entry{name: "m-x-1.0", kind: kindRevision, revision: Revision{1, 0}}},
		{"m-x-2.13", entry{name: "m-x-2.13", kind: kindRevision, revision: Revision{2, 13}}},
		{"m-x-1", entry{name: "m-x-1", kind: kindLink, protocol: 1}},
		{"m-x-default", entry{name: "m-x-default", kind: kindBootstrapped, toolchain: "default"}},
		{"m-x-gcc_13.2", entry{name: "m-x-gcc_13.2", kind: kindBootstrapped, toolchain: "gcc_13.2"}},
		{"m-x-default-0a1b2c3d", entry{name: "m-x-default-0a1b2c3d", kind: kindWork, toolchain: "default"}},
		{"m-x-default-0a1b2c3", entry{name: "m-x-default-0a1b2c3"}},
		{"m-x-", entry{name: "m-x-"}},
		{"other-1.0", entry{name: "other-1.0"}},
		{".lock", entry{name: ".lock"}},
		{"m-x-1.0.tmp", entry{name: "m-x-1.0.tmp"}},
	}
	for _, tt := range tests {
		t.Run(tt.base, func(t *testing.T) {
			if got := classify("m-x", tt.base); got != tt.want {
				t.Errorf("classify(%q, %q) = %+v, want %+v", "m-x", tt.base, got, tt.want)
			}
		})
	}
}
