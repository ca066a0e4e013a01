package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestManifestCheck(t *testing.T) {
	golden := filepath.Join("..", "..", "internal", "manifest", "testdata", "golden")
	want, err := os.ReadFile(filepath.Join(golden, "task-request.golden"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bad := filepath.Join(dir, "task.manifest")
	if err := os.WriteFile(bad, []byte(": 1\nname: hello\nversion: 1.0\nrepository-url: https://x.org/1\nmachine: m\ntarget: x86_64-linux-gnu\nhost: maybe\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		stdin    string
		wantOut  string
		wantErr  string // a part of stderr
		wantCode int
		exactErr bool
	}{
		{name: "file", args: []string{"manifest", "check", "--type", "task-request", filepath.Join(golden, "task-request.manifest")},
			wantOut: string(want)},
		{name: "stdin reordered", args: []string{"manifest", "check", "--type", "toolchain", "-"}, stdin: "# t\n: 1\nid: abc\n",
			wantOut: ": 1\nid: abc\n"},
		{name: "invalid status on stdin", args: []string{"manifest", "check", "--type", "result"},
			stdin:   ": 1\nname: hello\nversion: 1.0\nstatus: ok\n",
			wantErr: "<stdin>:4:1: error: result manifest: invalid status 'ok' in 'status'\n", exactErr: true, wantCode: 1},
		{name: "invalid field in file", args: []string{"manifest", "check", "--type", "task", bad},
			wantErr: bad + ":7:1: error: task manifest: invalid 'host' value 'maybe': not true or false\n", exactErr: true, wantCode: 1},
		{name: "malformed manifest", args: []string{"manifest", "check", "--type", "task"}, stdin: ": 1\nname hello\n",
			wantErr: "<stdin>:2:", wantCode: 1},
		{name: "unknown field strict", args: []string{"manifest", "check", "--type", "toolchain"}, stdin: ": 1\nid: t\nnew: x\n",
			wantErr: "<stdin>:3:1: error: toolchain manifest: unknown field 'new'\n", exactErr: true, wantCode: 1},
		{name: "unknown field lenient", args: []string{"manifest", "check", "--type", "toolchain", "--lenient"}, stdin: ": 1\nnew: x\nid: t\n",
			wantOut: ": 1\nid: t\nnew: x\n"},
		{name: "unknown type", args: []string{"manifest", "check", "--type", "tsak"}, stdin: ": 1\n",
			wantErr: `unknown manifest type "tsak" (valid: task, result, task-request, task-response, result-request, machine, bootstrapped-machine, bootstrap, toolchain)`, wantCode: 1},
		{name: "no type", args: []string{"manifest", "check"}, stdin: ": 1\n",
			wantErr: "--type is required", wantCode: 1},
		{name: "missing file", args: []string{"manifest", "check", "--type", "task", filepath.Join(dir, "missing")},
			wantErr: "no such file or directory", wantCode: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runManifest(t, tt.stdin, tt.args...)
			if code != tt.wantCode {
				t.Errorf("buildfarm %s: exit %d, want %d (stderr %q)", strings.Join(tt.args, " "), code, tt.wantCode, errOut)
			}
			if out != tt.wantOut {
				t.Errorf("buildfarm %s: stdout =\n%s\nwant\n%s", strings.Join(tt.args, " "), out, tt.wantOut)
			}
			if tt.exactErr && errOut != tt.wantErr || !strings.Contains(errOut, tt.wantErr) {
				t.Errorf("buildfarm %s: stderr = %q, want %q", strings.Join(tt.args, " "), errOut, tt.wantErr)
			}
		})
	}
}

func TestManifestCheckHelp(t *testing.T) {
	out, _, code := runManifest(t, "", "manifest", "check", "--help")
	for _, want := range []string{"--type", "--lenient", "bootstrapped-machine", "Examples:", "buildfarm manifest check --type machine", "FILE:LINE:COLUMN"} {
		if !strings.Contains(out, want) {
			t.Errorf("manifest check --help lacks %q:\n%s", want, out)
		}
	}
	if code != 0 {
		t.Errorf("manifest check --help: exit %d", code)
	}
}
