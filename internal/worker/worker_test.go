package worker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/archive"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/tftp"
)

// agentSide serves a session directory (get/, put/) the way the agent does,
// with the agent's rules, on a loopback port; it returns the address.
func agentSide(t *testing.T, dir string) string {
	t.Helper()
	for _, d := range []string{"get", "put"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var rules []tftp.Rule
	for _, s := range []string{`Gr ^/?(.+)$ get/\1`, `Pr ^/?(.+)$ put/\1`} {
		r, err := tftp.ParseRule(s)
		if err != nil {
			t.Fatal(err)
		}
		rules = append(rules, r)
	}
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		(&tftp.Server{Root: dir, Rules: rules}).Serve(ctx, conn)
	}()
	t.Cleanup(func() { cancel(); <-done; conn.Close() })
	return conn.LocalAddr().String()
}

func testWorker(t *testing.T, addr string, mode Mode) *Worker {
	cfg := DefaultConfig()
	cfg.TFTP, cfg.Mode, cfg.Dir, cfg.LogLimit = addr, mode, t.TempDir(), 4096
	cfg.StepUID, cfg.StepGID = 0, 0 // the steps run as the test
	var logs bytes.Buffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("worker log:\n%s", logs.String())
		}
	})
	return New(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
}

// placeTask puts an example's task manifest and its sources archive in get/.
func placeTask(t *testing.T, session, example string) *manifest.Task {
	t.Helper()
	src := filepath.Join("..", "..", "examples", example)
	ms, err := manifest.ReadFile(filepath.Join(src, "task.manifest"))
	if err != nil {
		t.Fatal(err)
	}
	task, err := manifest.ParseTask(ms.Manifest(0), "task.manifest", manifest.Strict)
	if err != nil {
		t.Fatal(err)
	}
	if err := manifest.WriteFile(filepath.Join(session, "get", TaskFile), ms.Manifests()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(session, "get", KeyFile), []byte(testKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(session, "get", task.Archive))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := archive.Pack(f, src, nil); err != nil {
		t.Fatal(err)
	}
	return task
}

// testKey is the result key placeTask gives the worker.
const testKey = "0123456789abcdef0123456789abcdef"

// readResult reads the result the worker uploaded under testKey's name.
func readResult(t *testing.T, session string) *manifest.Result {
	t.Helper()
	ms, err := manifest.ReadFile(filepath.Join(session, "put", ResultName(testKey)))
	if err != nil {
		t.Fatalf("no result uploaded: %v", err)
	}
	res, err := manifest.ParseResult(ms.Manifest(0), ResultFile, manifest.Strict)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestBuildExamples(t *testing.T) {
	tests := []struct {
		example string
		status  manifest.Status
		ops     map[string]manifest.Status
		inLog   map[string]string
	}{
		{
			example: "hello",
			status:  manifest.StatusSuccess,
			ops: map[string]manifest.Status{"configure": manifest.StatusSuccess, "update": manifest.StatusSuccess,
				"test": manifest.StatusSuccess, "install": manifest.StatusSuccess},
			inLog: map[string]string{"configure": "/install\n", "test": "PASS: greeting", "install": "/install/bin/hello"},
		},
		{
			example: "hello-broken",
			status:  manifest.StatusError,
			ops: map[string]manifest.Status{"configure": manifest.StatusSuccess, "update": manifest.StatusSuccess,
				"test": manifest.StatusError},
			inLog: map[string]string{"test": "FAIL: greeting: got 'Hello, Wrold!', want 'Hello, World!'"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.example, func(t *testing.T) {
			session := t.TempDir()
			addr := agentSide(t, session)
			task := placeTask(t, session, tt.example)
			// The examples install under /build; point them at the
			// worker's directory instead.
			w := testWorker(t, addr, ModeBuild)
			for i, s := range task.Steps {
				task.Steps[i].Command = strings.ReplaceAll(s.Command, "/build/", w.cfg.Dir+"/")
			}
			if err := manifest.WriteFile(filepath.Join(session, "get", TaskFile), []manifest.Manifest{task.Manifest()}); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := w.Run(ctx); err != nil {
				t.Fatalf("Run = %v", err)
			}
			res := readResult(t, session)
			if res.Name != task.Name || res.Version != task.Version || res.Status != tt.status {
				t.Errorf("result %s %s %v, want %s %s %v", res.Name, res.Version, res.Status, task.Name, task.Version, tt.status)
			}
			got := map[string]manifest.Status{}
			logs := map[string]string{}
			for _, r := range res.Results {
				got[r.Operation] = r.Status
				logs[r.Operation] = r.Log
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.ops) {
				t.Errorf("operations %v, want %v", got, tt.ops)
			}
			for op, want := range tt.inLog {
				if !strings.Contains(logs[op], want) {
					t.Errorf("%s log %q does not contain %q", op, logs[op], want)
				}
			}
			if b, err := os.ReadFile(filepath.Join(session, "put", ArtifactPrefix+"hello")); tt.example == "hello" && (err != nil || !strings.Contains(string(b), "Hello, World!")) {
				t.Errorf("artifact hello = %q, %v; want the built program", b, err)
			}
			if _, err := os.Stat(filepath.Join(session, "put", ProgressFile)); err != nil {
				t.Errorf("no progress uploaded: %v", err)
			}
		})
	}
}

func TestBuildAbortsWithoutSources(t *testing.T) {
	session := t.TempDir()
	addr := agentSide(t, session)
	task := placeTask(t, session, "hello")
	os.Remove(filepath.Join(session, "get", task.Archive))
	if err := testWorker(t, addr, ModeBuild).Run(context.Background()); err != nil {
		t.Fatalf("Run = %v", err)
	}
	res := readResult(t, session)
	if res.Status != manifest.StatusAbort || len(res.Results) != 1 || !strings.Contains(res.Results[0].Log, task.Archive) {
		t.Errorf("result %v %+v, want abort naming %s", res.Status, res.Results, task.Archive)
	}
}

func TestBuildWithoutTaskFails(t *testing.T) {
	session := t.TempDir()
	addr := agentSide(t, session)
	err := testWorker(t, addr, ModeBuild).Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), TaskFile) {
		t.Errorf("Run without a task = %v, want an error naming %s", err, TaskFile)
	}
	if des, _ := os.ReadDir(filepath.Join(session, "put")); len(des) > 1 { // progress only
		t.Errorf("a result was uploaded without a task: %v", des)
	}
}

// TestBuildWithoutKeyFails checks that a worker given no result key
// uploads no result: it could not be told from a step's.
func TestBuildWithoutKeyFails(t *testing.T) {
	session := t.TempDir()
	addr := agentSide(t, session)
	placeTask(t, session, "hello")
	for _, key := range []string{"", "short", strings.Repeat("X", 32)} {
		os.Remove(filepath.Join(session, "get", KeyFile))
		if key != "" {
			writeTestFile(t, filepath.Join(session, "get", KeyFile), key)
		}
		err := testWorker(t, addr, ModeBuild).Run(context.Background())
		if err == nil || !strings.Contains(err.Error(), KeyFile) {
			t.Errorf("Run with key %q = %v, want an error naming %s", key, err, KeyFile)
		}
		des, _ := os.ReadDir(filepath.Join(session, "put"))
		for _, de := range des {
			if strings.HasPrefix(de.Name(), "result") {
				t.Errorf("key %q: a result was uploaded: %s", key, de.Name())
			}
		}
	}
}

func writeTestFile(t *testing.T, name, data string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestBootstrap(t *testing.T) {
	session := t.TempDir()
	addr := agentSide(t, session)
	tool := []byte("#!/bin/sh\necho tool\n")
	sum := sha256.Sum256(tool)
	os.WriteFile(filepath.Join(session, "get", "tool"), tool, 0o644)
	tc := fmt.Sprintf(": 1\nid: tc1\nfile: tool %s\n", hex.EncodeToString(sum[:]))
	os.WriteFile(filepath.Join(session, "get", ToolchainFile), []byte(tc), 0o644)
	w := testWorker(t, addr, ModeBootstrap)
	if err := w.Run(context.Background()); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(w.cfg.Dir, "toolchain", "tool")); err != nil || !bytes.Equal(b, tool) {
		t.Errorf("installed tool = %q, %v", b, err)
	}
	ms, err := manifest.ReadFile(filepath.Join(session, "put", BootstrapFile))
	if err != nil {
		t.Fatal(err)
	}
	bs, err := manifest.ParseBootstrap(ms.Manifest(0), BootstrapFile, manifest.Strict)
	if err != nil || len(bs.Versions) != 1 || bs.Versions[0] != (manifest.ToolVersion{Tool: VersionTool, Version: Version}) {
		t.Errorf("bootstrap manifest %+v, %v", bs, err)
	}

	// A file whose sum does not match is refused.
	os.WriteFile(filepath.Join(session, "get", "tool"), []byte("tampered"), 0o644)
	os.Remove(filepath.Join(session, "put", BootstrapFile))
	err = testWorker(t, addr, ModeBootstrap).Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "sha256") {
		t.Errorf("Run with a tampered file = %v, want a sha256 error", err)
	}
	if _, err := os.Stat(filepath.Join(session, "put", BootstrapFile)); err == nil {
		t.Errorf("bootstrap manifest uploaded despite a bad file")
	}
}

func TestParseToolchainFiles(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	tests := []struct {
		in, wantErr string
	}{
		{": 1\nid: x\nfile: a.tar.gz " + sum + "\n", ""},
		{": 1\nfile: a " + sum + "\n", "no id"},
		{": 1\nid: x\nfile: a\n", "want 'NAME SHA256'"},
		{": 1\nid: x\nfile: a 1234\n", "invalid sha256"},
		{": 1\nid: x\nfile: ../a " + sum + "\n", "not a plain relative name"},
		{": 1\nid: x\nfile: /a " + sum + "\n", "not a plain relative name"},
		{": 1\nid: x\ncolour: red\n", "unknown field"},
	}
	for _, tt := range tests {
		_, err := ParseToolchainFiles(strings.NewReader(tt.in), "toolchain.manifest")
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("ParseToolchainFiles(%q) = %v, want %q", tt.in, err, tt.wantErr)
		}
	}
}
