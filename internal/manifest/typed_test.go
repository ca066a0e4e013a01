package manifest

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/buildfarm/buildfarm/internal/arch"
)

const (
	taskBase = ": 1\nname: hello\nversion: 1.0\nrepository-url: https://example.org/1/stable\n" +
		"machine: linux\ntarget: x86_64-linux-gnu\n" // 6 lines
	resultBase  = ": 1\nname: hello\nversion: 1.0\nstatus: error\nupdate-status: error\n"  // 5 lines
	requestBase = ": 1\nagent: a1\ntoolchain-name: buildfarm\ntoolchain-version: 0.17.0\n" // 4 lines
	headerBase  = ":\nid: m-1.0\nname: m\nsummary: M\n"                                    // 4 lines
	machineBase = ": 1\nid: m-1.0\nname: m\nsummary: M\ntype: kvm\n"                       // 5 lines
	responseHdr = ": 1\nsession: s1\nresult-url: https://ci.example.org/?build-result\n"   // 3 lines
	resultReq   = ": 1\nsession: s1\n"                                                     // 2 lines
)

// bootstrapped returns a bootstrapped machine manifest with the given
// machine, toolchain and bootstrap values.
func bootstrapped(machine, toolchain, bootstrap string) string {
	return ": 1\nmachine:\\\n" + machine + "\\\ntoolchain:\\\n" + toolchain + "\\\nbootstrap:\\\n" + bootstrap + "\\\n"
}

// TestCheckErrors checks valid and invalid fields of each kind: an error
// names the file, the position of the field (the start of the manifest
// for a missing one), the manifest type and the field. want is a prefix of
// the error ("" for valid manifests).
func TestCheckErrors(t *testing.T) {
	const f = "test.manifest:"
	tests := []struct {
		name, kind, text, want string
	}{
		// task
		{"task valid", "task", taskBase, ""},
		{"task all optional", "task", taskBase + "repository-type: git\ntrust: yes\nrequires: c++14\ntests: * hello-tests >= 1.0\n" +
			"auxiliary-machine: db\nauxiliary-machine-pgsql: pg\nauxiliary-environment:\\\n# db\nDB_HOST=1.2.3.4\n\\\n" +
			"target-config: a=\"x y\" b='z'\nhost: true\nwarning-regex: '^warning: '\ninteractive: error\n" +
			"buildfarm-archive: hello-1.0.tar.gz\nbuildfarm-install: make install\n", ""},
		{"task unknown field", "task", taskBase + "status: ok\n", f + "7:1: error: task manifest: unknown field 'status'"},
		{"task unknown buildfarm field", "task", taskBase + "buildfarm-deploy: scp x y\n", f + "7:1: error: task manifest: unknown field 'buildfarm-deploy'"},
		{"task redefinition", "task", taskBase + "name: hello2\n", f + "7:1: error: task manifest: redefinition of 'name'"},
		{"task missing target", "task", strings.TrimSuffix(taskBase, "target: x86_64-linux-gnu\n"), f + "1:1: error: task manifest: missing required field 'target'"},
		{"task missing name", "task", ": 1\nversion: 1.0\n", f + "1:1: error: task manifest: missing required field 'name'"},
		{"task bad name", "task", strings.Replace(taskBase, "name: hello", "name: 1hello", 1), f + "2:1: error: task manifest: invalid 'name' value '1hello': not a package name"},
		{"task bad version", "task", strings.Replace(taskBase, "version: 1.0", "version: 1.0 beta", 1), f + "3:1: error: task manifest: invalid 'version' value '1.0 beta'"},
		{"task bad repository-url", "task", strings.Replace(taskBase, "https://", "", 1), f + "4:1: error: task manifest: invalid 'repository-url' value 'example.org/1/stable': not a URL"},
		{"task bad repository-type", "task", taskBase + "repository-type: svn\n", f + "7:1: error: task manifest: invalid 'repository-type' value 'svn'"},
		{"task bad trust", "task", taskBase + "trust: 37:ce:2c\n", f + "7:1: error: task manifest: invalid 'trust' value '37:ce:2c'"},
		{"task bad tests", "task", taskBase + "tests: * -tests\n", f + "7:1: error: task manifest: invalid 'tests' value '* -tests'"},
		{"task empty requires", "task", taskBase + "requires:\n", f + "7:1: error: task manifest: invalid 'requires' value '': empty value"},
		{"task auxiliary machine twice", "task", taskBase + "auxiliary-machine-db: a\nauxiliary-machine-db: b\n", f + "8:1: error: task manifest: redefinition of 'auxiliary-machine-db'"},
		{"task auxiliary machine without a name", "task", taskBase + "auxiliary-machine: a\nauxiliary-machine-: b\n", f + "8:1: error: task manifest: unknown field 'auxiliary-machine-'"},
		{"task bad target", "task", strings.Replace(taskBase, "x86_64-linux-gnu", "x86_64", 1), f + "6:1: error: task manifest: invalid 'target' value 'x86_64': not a target triplet"},
		{"task bad auxiliary-environment", "task", taskBase + "auxiliary-environment: DB HOST=1\n", f + "7:1: error: task manifest: invalid 'auxiliary-environment' value 'DB HOST=1': line 1"},
		{"task unterminated target-config", "task", taskBase + "target-config: a=\"-O2\n", f + "7:1: error: task manifest: invalid 'target-config' value 'a=\"-O2': unterminated quoted string"},
		{"task bad host", "task", taskBase + "host: yes\n", f + "7:1: error: task manifest: invalid 'host' value 'yes': not true or false"},
		{"task bad warning-regex", "task", taskBase + "warning-regex: (\n", f + "7:1: error: task manifest: invalid 'warning-regex' value '('"},
		{"task archive with a directory", "task", taskBase + "buildfarm-archive: ../x.tar.gz\n", f + "7:1: error: task manifest: invalid 'buildfarm-archive' value '../x.tar.gz': not a plain file name"},
		{"task empty step", "task", taskBase + "buildfarm-test:\n", f + "7:1: error: task manifest: invalid 'buildfarm-test' value '': empty value"},
		{"task step twice", "task", taskBase + "buildfarm-test: a\nbuildfarm-test: b\n", f + "8:1: error: task manifest: redefinition of 'buildfarm-test'"},
		{"task two manifests", "task", taskBase + ":\nname: x\n", f + "7:1: error: task manifest: 2 manifests in the stream, want 1"},

		// result
		{"result valid", "result", resultBase + "update-log: x\nworker-checksum: 5\n", ""},
		{"result bad operation status", "result", resultBase + "test-status: ok\n", f + "6:1: error: result manifest: invalid status 'ok' in 'test-status'"},
		{"result bad status", "result", strings.Replace(resultBase, "status: error", "status: failed", 1), f + "4:1: error: result manifest: invalid status 'failed' in 'status'"},
		{"result log before status", "result", resultBase + "test-log: x\ntest-status: success\n", f + "6:1: error: result manifest: 'test-log' before 'test-status'"},
		{"result status twice", "result", resultBase + "update-status: success\n", f + "6:1: error: result manifest: redefinition of 'update-status'"},
		{"result log twice", "result", resultBase + "update-log: a\nupdate-log: b\n", f + "7:1: error: result manifest: redefinition of 'update-log'"},
		{"result status below operations", "result", ": 1\nname: hello\nversion: 1.0\nstatus: warning\nupdate-status: error\n", f + "4:1: error: result manifest: status 'warning' is less severe than the operations' merged status 'error'"},
		{"result missing status", "result", ": 1\nname: hello\nversion: 1.0\n", f + "1:1: error: result manifest: missing required field 'status'"},
		{"result unknown field", "result", resultBase + "duration: 5\n", f + "6:1: error: result manifest: unknown field 'duration'"},
		{"result abnormal without operations", "result", ": 1\nname: hello\nversion: 1.0\nstatus: abnormal\n", ""},

		// task request
		{"task request valid", "task-request", requestBase + headerBase + headerBase, ""},
		{"task request no machines", "task-request", requestBase, f + "1:1: error: task request manifest: no machine header manifests follow"},
		{"task request bad toolchain version", "task-request", strings.Replace(requestBase, "0.17.0", "0.17", 1) + headerBase, f + "4:1: error: task request manifest: invalid 'toolchain-version' value '0.17': not a standard version"},
		{"task request snapshot toolchain version", "task-request", strings.Replace(requestBase, "0.17.0", "0.18.0-a.0.20251120101010.abcdef", 1) + headerBase, ""},
		{"task request interactive without login", "task-request", requestBase + "interactive-mode: true\n" + headerBase, f + "5:1: error: task request manifest: interactive-mode true requires 'interactive-login'"},
		{"task request bad interactive mode", "task-request", requestBase + "interactive-mode: yes\n" + headerBase, f + "5:1: error: task request manifest: invalid 'interactive-mode' value 'yes'"},
		{"task request bad fingerprint", "task-request", requestBase + "fingerprint: AB:CD\n" + headerBase, f + "5:1: error: task request manifest: invalid 'fingerprint' value 'AB:CD'"},
		{"task request bad auxiliary ram", "task-request", requestBase + "auxiliary-ram: 4G\n" + headerBase, f + "5:1: error: task request manifest: invalid 'auxiliary-ram' value '4G'"},
		{"task request missing agent", "task-request", ": 1\ntoolchain-name: x\n" + headerBase, f + "1:1: error: task request manifest: missing required field 'agent'"},
		{"machine header bad role", "task-request", requestBase + headerBase + "role: builder\n", f + "9:1: error: machine header manifest: invalid 'role' value 'builder': not build or auxiliary"},
		{"machine header zero ram", "task-request", requestBase + headerBase + "ram-minimum: 0\n", f + "9:1: error: machine header manifest: invalid 'ram-minimum' value '0': zero"},
		{"machine header ram range", "task-request", requestBase + headerBase + "ram-minimum: 10\nram-maximum: 5\n", f + "10:1: error: machine header manifest: 'ram-maximum' 5 is less than 'ram-minimum' 10"},
		{"machine header missing summary", "task-request", requestBase + ":\nid: m-1.0\nname: m\n", f + "5:1: error: machine header manifest: missing required field 'summary'"},
		{"machine header unknown field", "task-request", requestBase + headerBase + "cpus: 2\n", f + "9:1: error: machine header manifest: unknown field 'cpus'"},
		{"machine header arch", "task-request", requestBase + headerBase + "buildfarm-arch: aarch64\n", ""},
		{"machine header bad arch", "task-request", requestBase + headerBase + "buildfarm-arch: riscv64\n", f + "9:1: error: machine header manifest: invalid 'buildfarm-arch' value 'riscv64': not x86_64 or aarch64"},

		// task response
		{"task response no task", "task-response", ": 1\nsession:\n", ""},
		{"task response no task but a url", "task-response", ": 1\nsession:\nresult-url: https://x.org/\n", f + "3:1: error: task response manifest: 'result-url' with an empty session"},
		{"task response no task but a manifest", "task-response", ": 1\nsession:\n" + ":\nname: hello\n", f + "3:1: error: task response manifest: a manifest follows an empty session"},
		{"task response missing session", "task-response", ": 1\nresult-url: https://x.org/\n", f + "1:1: error: task response manifest: missing required field 'session'"},
		{"task response missing result url", "task-response", ": 1\nsession: s1\n", f + "1:1: error: task response manifest: missing required field 'result-url'"},
		{"task response missing task", "task-response", responseHdr, f + "1:1: error: task response manifest: no task manifest follows"},
		{"task response with task", "task-response", responseHdr + strings.Replace(taskBase, ": 1", ":", 1), ""},
		{"task response two tasks", "task-response", responseHdr + strings.Replace(taskBase, ": 1", ":", 1) + strings.Replace(taskBase, ": 1", ":", 1), f + "10:1: error: task response manifest: more than one task manifest follows"},
		{"task response bad result url", "task-response", ": 1\nsession: s1\nresult-url: ftp://x.org/r\n", f + "3:1: error: task response manifest: invalid 'result-url' value 'ftp://x.org/r': not an http or https URL"},
		{"task response bad upload url", "task-response", responseHdr + "bindist-upload-url: /upload\n", f + "4:1: error: task response manifest: invalid 'bindist-upload-url' value '/upload'"},
		{"task response bad task", "task-response", responseHdr + ":\nname: hello\n", f + "4:1: error: task manifest: missing required field 'version'"},

		// result request
		{"result request valid", "result-request", resultReq + "challenge: aGVsbG8=\nagent-checksum: 2\n" + strings.Replace(resultBase, ": 1", ":", 1), ""},
		{"result request empty session", "result-request", ": 1\nsession:\n" + strings.Replace(resultBase, ": 1", ":", 1), f + "2:1: error: result request manifest: invalid 'session' value '': empty value"},
		{"result request bad challenge", "result-request", resultReq + "challenge: not*base64\n" + strings.Replace(resultBase, ": 1", ":", 1), f + "3:1: error: result request manifest: invalid 'challenge' value 'not*base64': not base64"},
		{"result request no result", "result-request", resultReq, f + "1:1: error: result request manifest: no result manifest follows"},
		{"result request bad result", "result-request", resultReq + ":\nname: hello\nversion: 1.0\nstatus: ok\n", f + "6:1: error: result manifest: invalid status 'ok' in 'status'"},

		// machine
		{"machine valid", "machine", machineBase + "mac: DE:AD:be:ef:00:01\noptions: -m 1G -append 'quiet console=ttyS0'\nchanges: 1.0: first\n", ""},
		{"machine bad type", "machine", strings.Replace(machineBase, "kvm", "xen", 1), f + "5:1: error: machine manifest: invalid 'type' value 'xen': not kvm or nspawn"},
		{"machine bad mac", "machine", machineBase + "mac: de:ad:be:ef\n", f + "6:1: error: machine manifest: invalid 'mac' value 'de:ad:be:ef': not a MAC address"},
		{"machine bad options", "machine", machineBase + "options: -append \"quiet\n", f + "6:1: error: machine manifest: invalid 'options' value '-append \"quiet': unterminated quoted string"},
		{"machine missing type", "machine", strings.TrimSuffix(machineBase, "type: kvm\n"), f + "1:1: error: machine manifest: missing required field 'type'"},
		{"machine missing id", "machine", ": 1\nname: m\nsummary: M\ntype: kvm\n", f + "1:1: error: machine manifest: missing required field 'id'"},
		{"machine arch", "machine", machineBase + "buildfarm-arch: aarch64\n", ""},
		{"machine bad arch", "machine", machineBase + "buildfarm-arch: arm64\n", f + "6:1: error: machine manifest: invalid 'buildfarm-arch' value 'arm64': not x86_64 or aarch64"},
		{"machine arch twice", "machine", machineBase + "buildfarm-arch: aarch64\nbuildfarm-arch: x86_64\n", f + "7:1: error: machine manifest: redefinition of 'buildfarm-arch'"},

		// toolchain and bootstrap
		{"toolchain valid", "toolchain", ": 1\nid: abc\n", ""},
		{"toolchain missing id", "toolchain", ": 1\n", f + "1:1: error: toolchain manifest: missing required field 'id'"},
		{"toolchain bad id", "toolchain", ": 1\nid: a b\n", f + "2:1: error: toolchain manifest: invalid 'id' value 'a b': contains whitespace"},
		{"bootstrap bad version", "bootstrap", ": 1\nbbot-version: 0.17.0\n", f + "2:1: error: bootstrap manifest: invalid 'bbot-version' value '0.17.0': not a numeric version"},
		{"bootstrap no versions", "bootstrap", ": 1\n", f + "1:1: error: bootstrap manifest: missing required field '<tool>-version'"},
		{"bootstrap version twice", "bootstrap", ": 1\nbbot-version: 1\nbbot-version: 2\n", f + "3:1: error: bootstrap manifest: redefinition of 'bbot-version'"},

		// bootstrapped machine: errors in the nested manifests are where
		// they are in the file.
		{"bootstrapped valid", "bootstrapped-machine", bootstrapped(machineBase, ": 1\nid: t\n", ": 1\nbbot-version: 1\n"), ""},
		{"bootstrapped bad nested machine", "bootstrapped-machine", bootstrapped(strings.Replace(machineBase, "kvm", "xen", 1), ": 1\nid: t\n", ": 1\nbbot-version: 1\n"),
			f + "7:1: error: machine manifest: invalid 'type' value 'xen'"},
		{"bootstrapped bad nested bootstrap", "bootstrapped-machine", bootstrapped(machineBase, ": 1\nid: t\n", ": 1\nbbot-version: x\n"),
			f + "15:1: error: bootstrap manifest: invalid 'bbot-version' value 'x'"},
		{"bootstrapped unparsable nested", "bootstrapped-machine", ": 1\nmachine: x\n",
			f + "2:11: error: bootstrapped machine manifest: in 'machine': ':' expected after name"},
		{"bootstrapped two nested", "bootstrapped-machine", bootstrapped(machineBase+":\nid: x\n", ": 1\nid: t\n", ": 1\nbbot-version: 1\n"),
			f + "2:1: error: bootstrapped machine manifest: 'machine' holds 2 manifests, want 1"},
		{"bootstrapped missing bootstrap", "bootstrapped-machine", ": 1\nmachine:\\\n" + machineBase + "\\\ntoolchain:\\\n: 1\nid: t\n\\\n",
			f + "1:1: error: bootstrapped machine manifest: missing required field 'bootstrap'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := checkString(tt.kind, tt.text, Strict)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Check(%s, %q) error: %v", tt.kind, tt.text, err)
			case tt.want == "":
				return
			case err == nil:
				t.Fatalf("Check(%s, %q) succeeded, want error %q", tt.kind, tt.text, tt.want)
			}
			var me *Error
			if !errors.As(err, &me) {
				t.Fatalf("Check(%s, %q) error = %#v, want *Error", tt.kind, tt.text, err)
			}
			if !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("Check(%s, %q) error =\n%s\nwant it to start with\n%s", tt.kind, tt.text, err, tt.want)
			}
		})
	}
}

// TestLenient checks that unknown fields fail in strict mode and are kept,
// after the known ones, in lenient mode.
func TestLenient(t *testing.T) {
	tests := []struct {
		kind, text string
		want       [][]nv
	}{
		{"task", ": 1\nnew-field: x\n" + strings.TrimPrefix(taskBase, ": 1\n") + "buildfarm-update: make\n", [][]nv{{
			{"", "1"}, {"name", "hello"}, {"version", "1.0"}, {"repository-url", "https://example.org/1/stable"},
			{"machine", "linux"}, {"target", "x86_64-linux-gnu"}, {"buildfarm-update", "make"}, {"new-field", "x"},
		}}},
		{"result", resultBase + "duration: 5\nupdate-log: log\n", [][]nv{{
			{"", "1"}, {"name", "hello"}, {"version", "1.0"}, {"status", "error"}, {"update-status", "error"},
			{"update-log", "log"}, {"duration", "5"},
		}}},
		{"task-request", requestBase + "os: linux\n" + headerBase + "cpus: 2\n", [][]nv{
			{{"", "1"}, {"agent", "a1"}, {"toolchain-name", "buildfarm"}, {"toolchain-version", "0.17.0"}, {"os", "linux"}},
			{{"", "1"}, {"id", "m-1.0"}, {"name", "m"}, {"summary", "M"}, {"cpus", "2"}},
		}},
		{"task-response", ": 1\nsession:\nretry-after: 60\n", [][]nv{{{"", "1"}, {"session", ""}, {"retry-after", "60"}}}},
		{"toolchain", ": 1\nname: gcc\nid: t\n", [][]nv{{{"", "1"}, {"id", "t"}, {"name", "gcc"}}}},
		{"bootstrapped-machine", bootstrapped(machineBase+"cpu: host\n", ": 1\nid: t\n", ": 1\nbbot-version: 1\nextra: y\n"), [][]nv{{
			{"", "1"},
			{"machine", ": 1\nid: m-1.0\nname: m\nsummary: M\ntype: kvm\ncpu: host"},
			{"toolchain", ": 1\nid: t"},
			{"bootstrap", ": 1\nbbot-version: 1\nextra: y"},
		}}},
	}
	for _, tt := range tests {
		t.Run(tt.kind, func(t *testing.T) {
			_, err := checkString(tt.kind, tt.text, Strict)
			var me *Error
			if !errors.As(err, &me) || !strings.Contains(me.Msg, "unknown field") {
				t.Errorf("strict Check(%s) error = %v, want an unknown field", tt.kind, err)
			}
			out, err := checkString(tt.kind, tt.text, Lenient)
			if err != nil {
				t.Fatalf("lenient Check(%s): %v", tt.kind, err)
			}
			if diff := cmp.Diff(tt.want, pairsOf(out)); diff != "" {
				t.Errorf("lenient Check(%s) pairs (-want +got):\n%s", tt.kind, diff)
			}
		})
	}
}

// TestTypedFields checks that the parsers fill the typed fields, and that
// a typed manifest built in code serializes and parses back to itself.
func TestTypedFields(t *testing.T) {
	ms, err := readAll("testdata/golden/task.manifest")
	if err != nil {
		t.Fatal(err)
	}
	task, err := ParseTask(ms[0], "task.manifest", Strict)
	if err != nil {
		t.Fatal(err)
	}
	f := false
	want := &Task{
		Name: "libhello", Version: "1.2.3+1", RepositoryURL: "https://pkg.cppget.org/1/stable", RepositoryType: "pkg",
		Trust:              []string{"37:CE:2C:A5:1D:CF:93:81:D7:07:46:AD:66:B3:C3:90:83:B8:96:9E:34:F0:E7:B3:A2:B0:6C:EF:66:A4:BE:65"},
		Requires:           []string{"c++14 ; Uses generic lambdas."},
		Tests:              []TestDependency{{"tests", "libhello-tests == 1.2.3"}, {"examples", "hello-example"}, {"benchmarks", "* libhello-bench"}},
		DependencyChecksum: "5b1e6e3cc2f1dd2bd1e4a6d1f4c1b7b0a7a4e4d1dc3fd4c1f7b1b4e1c3e0a1f2",
		Machine:            "linux_debian_12-gcc_13",
		AuxiliaryMachines:  []AuxiliaryMachine{{Name: "pgsql", Machine: "linux_debian_12-postgresql_16"}},
		Target:             "x86_64-linux-gnu", Environment: "default",
		AuxiliaryEnvironment: "# The database on the auxiliary machine.\nDATABASE_HOST=192.168.0.2\nDATABASE_PORT=5432\nDATABASE_USER=test",
		TargetConfig:         []string{`config.cc.coptions="-O2 -g"`, "config.cxx=g++-13"},
		PackageConfig:        "config.libhello.extra=true",
		Host:                 &f,
		WarningRegex:         []string{`"^warning: "`, `".*: warning: "`},
		WorkerChecksum:       "5",
		Archive:              "libhello-1.2.3+1.tar.gz",
		Steps: []Step{{"configure", "./configure --prefix=/usr"}, {"update", "make -j2"},
			{"test", "make check"}, {"install", "make install DESTDIR=/tmp/install"}},
	}
	if diff := cmp.Diff(want, task); diff != "" {
		t.Errorf("ParseTask(golden task) (-want +got):\n%s", diff)
	}
	rs, err := task.WarningRegexps()
	if err != nil || len(rs) != 2 || !rs[1].MatchString("a.c:1: warning: x") || rs[0].MatchString("no warning: here") {
		t.Errorf("WarningRegexps() = %v, %v", rs, err)
	}
	if got := Unquote(task.TargetConfig[0]); got != "config.cc.coptions=-O2 -g" {
		t.Errorf("Unquote(%q) = %q", task.TargetConfig[0], got)
	}

	// Built in code: a worker's result and an agent's request.
	ram := uint64(0)
	req := &TaskRequest{Agent: "a", ToolchainName: "buildfarm", ToolchainVersion: "0.17.0", AuxiliaryRAM: &ram,
		Machines: []MachineHeader{{ID: "m-1", Name: "m", Summary: "M", RAMMinimum: 1024}}}
	back, err := ParseTaskRequest(req.Manifests(), "", Strict)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(req, back); diff != "" {
		t.Errorf("ParseTaskRequest(Manifests()) (-want +got):\n%s", diff)
	}
	res := &ResultRequest{Session: "s", Challenge: "aGk=", Result: Result{Name: "hello", Version: "1.0", Status: StatusWarning,
		Results: []OperationResult{{"configure", StatusSuccess, "ok\n"}, {"update", StatusWarning, "warning: x"}}}}
	rback, err := ParseResultRequest(res.Manifests(), "", Strict)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(res, rback); diff != "" {
		t.Errorf("ParseResultRequest(Manifests()) (-want +got):\n%s", diff)
	}

	m := &Machine{ID: "m-1", Name: "m", Summary: "M", Type: "kvm", Options: []string{"-append", `"console=ttyS0 quiet"`, `a'b c'`}}
	if got, want := m.UnquotedOptions(), []string{"-append", "console=ttyS0 quiet", "ab c"}; !cmp.Equal(got, want) {
		t.Errorf("UnquotedOptions() = %q, want %q", got, want)
	}
	bm := &BootstrappedMachine{Machine: *m, Toolchain: Toolchain{ID: "t"},
		Bootstrap: Bootstrap{Versions: []ToolVersion{{"libbutl", 3}, {"bbot", 1}}}}
	bback, err := ParseBootstrappedMachine(bm.Manifest(), "", Strict)
	if err != nil {
		t.Fatal(err)
	}
	// The versions come back sorted by tool, as bbot writes them.
	bm.Bootstrap.Versions = []ToolVersion{{"bbot", 1}, {"libbutl", 3}}
	if diff := cmp.Diff(bm, bback); diff != "" {
		t.Errorf("ParseBootstrappedMachine(Manifest()) (-want +got):\n%s", diff)
	}
}

func TestTaskArchiveURL(t *testing.T) {
	const sum = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	m := Manifest{{Name: "", Value: "1"}, {Name: "name", Value: "hello"}, {Name: "version", Value: "1.0"}, {Name: "repository-url", Value: "https://example.org/hello.git"},
		{Name: "machine", Value: "busybox"}, {Name: "target", Value: "x86_64-linux-gnu"}, {Name: "buildfarm-archive", Value: "hello.tar.gz"},
		{Name: "buildfarm-archive-url", Value: "http://127.0.0.1:1/archives/" + sum}, {Name: "buildfarm-archive-sha256", Value: sum}}
	task, err := ParseTask(m, "t", Strict)
	if err != nil {
		t.Fatal(err)
	}
	if task.ArchiveSHA256 != sum || task.ArchiveURL == "" {
		t.Errorf("ParseTask: ArchiveURL %q, ArchiveSHA256 %q", task.ArchiveURL, task.ArchiveSHA256)
	}
	if diff := cmp.Diff(m, task.Manifest()); diff != "" {
		t.Errorf("Manifest() round trip (-want +got):\n%s", diff)
	}
	m[len(m)-1].Value = "XYZ"
	if _, err := ParseTask(m, "t", Strict); err == nil || !strings.Contains(err.Error(), "buildfarm-archive-sha256") {
		t.Errorf("ParseTask(bad sum) = %v, want an error naming buildfarm-archive-sha256", err)
	}
}

// TestMachineArch checks buildfarm-arch: absent means x86_64; it is known
// in strict mode, kept in lenient mode, and serialized after build2's
// fields and before the extra ones, wherever it was written.
func TestMachineArch(t *testing.T) {
	text := ": 1\nbuildfarm-arch: aarch64\nid: m-1.0\nname: m\nsummary: M\ntype: kvm\nchanges: 1.0: first\n"
	want := []nv{{"", "1"}, {"id", "m-1.0"}, {"name", "m"}, {"summary", "M"}, {"type", "kvm"},
		{"changes", "1.0: first"}, {"buildfarm-arch", "aarch64"}}
	for _, mode := range []Mode{Strict, Lenient} {
		out, err := checkString("machine", text, mode)
		if err != nil {
			t.Fatalf("Check(machine, mode %v): %v", mode, err)
		}
		if diff := cmp.Diff([][]nv{want}, pairsOf(out)); diff != "" {
			t.Errorf("Check(machine, mode %v) pairs (-want +got):\n%s", mode, diff)
		}
	}
	lenient := text + "cpu: host\n"
	out, err := checkString("machine", lenient, Lenient)
	if err != nil {
		t.Fatalf("lenient Check(machine): %v", err)
	}
	if diff := cmp.Diff([][]nv{append(want, nv{"cpu", "host"})}, pairsOf(out)); diff != "" {
		t.Errorf("lenient Check(machine) pairs (-want +got):\n%s", diff)
	}

	ms, err := parseAll(strings.NewReader(text), "m")
	if err != nil {
		t.Fatal(err)
	}
	m, err := ParseMachine(ms[0], "m", Strict)
	if err != nil {
		t.Fatal(err)
	}
	if m.Arch != "aarch64" || m.Architecture() != arch.AArch64 {
		t.Errorf("ParseMachine(%q).Arch = %q, Architecture() = %q, want aarch64", text, m.Arch, m.Architecture())
	}
	if h := m.Header(); h.Arch != "aarch64" {
		t.Errorf("Header().Arch = %q, want aarch64", h.Arch)
	} else if got := pairsOf([]Manifest{h.Manifest()}); !cmp.Equal(got[0][len(got[0])-1], nv{"buildfarm-arch", "aarch64"}) {
		t.Errorf("Header().Manifest() = %v, want buildfarm-arch last", got)
	}
	x86 := Machine{ID: "m-1.0", Name: "m", Summary: "M", Type: "kvm"}
	if got := x86.Architecture(); got != arch.X8664 {
		t.Errorf("Architecture() without buildfarm-arch = %q, want x86_64", got)
	}
	for _, p := range x86.Manifest() {
		if p.Name == "buildfarm-arch" {
			t.Errorf("Manifest() of a machine without Arch has %v, want no buildfarm-arch", p)
		}
	}
}
