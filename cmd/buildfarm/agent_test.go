package main

import (
	"strings"
	"testing"
)

// TestAgentOptions: bad options are refused by name before anything runs,
// and the help names the options of the work loop.
func TestAgentOptions(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--request-timeout", "0s"}, "--request-timeout 0s: must be positive"},
		{[]string{"--request-interval", "-1s"}, "--request-interval -1s: must be positive"},
		{[]string{"--long-poll", "-5s"}, "--long-poll -5s: must not be negative"},
		{[]string{"--build-retries", "-1"}, "--build-retries -1: must not be negative"},
		{[]string{"--instances", "0"}, "--instances 0: must be 1 or more"},
		{[]string{"--toolchain-ver", "1"}, "not a standard version"},
		{[]string{"--ca", "/nonexistent/ca.pem"}, "--ca: CA bundle"},
		{[]string{"--auth-key", "/nonexistent/key.pem"}, "--auth-key"},
	} {
		args := append([]string{"agent", "--machines", t.TempDir(), "--tftp", t.TempDir()}, tc.args...)
		out, errOut, code := runManifest(t, "", append(args, "http://127.0.0.1:1/")...)
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("buildfarm %s: exit %d, stdout %q, stderr %q; want failure with %q", strings.Join(args, " "), code, out, errOut, tc.want)
		}
	}
	out, _, code := runManifest(t, "", "agent", "--help")
	for _, want := range []string{"--instances", "--long-poll", "--spool", "--ca", "--max-archive", "Buildfarm-Wait", "openssl genpkey -algorithm ed25519"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("agent --help (exit %d) does not mention %s", code, want)
		}
	}
}
