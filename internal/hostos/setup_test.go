package hostos

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestNameservers: the guests on br1 get the host's IPv4 name servers
// from its resolv.conf; other lines, IPv6 servers and junk are skipped.
func TestNameservers(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(p, []byte("# from the lease\nsearch example.org\nnameserver 10.0.2.3\nnameserver fe80::1\nnameserver not-an-ip\nnameserver  192.0.2.53 \n"), 0o644)
	if got, want := nameservers(p), []string{"10.0.2.3", "192.0.2.53"}; !slices.Equal(got, want) {
		t.Errorf("nameservers = %q, want %q", got, want)
	}
	if got := nameservers(filepath.Join(t.TempDir(), "none")); got != nil {
		t.Errorf("nameservers of no file = %q, want none", got)
	}
}
