package tftp

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestDecode(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want Packet
	}{
		{"RRQ", []byte("\x00\x01boot\x00OCTET\x00"), &RequestPacket{Op: OpRead, Filename: "boot", Mode: "octet"}},
		{"WRQ with options", []byte("\x00\x02r\x00octet\x00BLKSIZE\x001468\x00tsize\x0042\x00"),
			&RequestPacket{Op: OpWrite, Filename: "r", Mode: "octet", Options: []Option{{"blksize", "1468"}, {"tsize", "42"}}}},
		{"DATA", []byte("\x00\x03\xff\xffabc"), &Data{Block: 65535, Payload: []byte("abc")}},
		{"empty DATA", []byte("\x00\x03\x00\x07"), &Data{Block: 7, Payload: []byte{}}},
		{"ACK", []byte("\x00\x04\x01\x00"), &Ack{Block: 256}},
		{"ERROR", []byte("\x00\x05\x00\x01no such file\x00"), &Error{Code: ErrNotFound, Message: "no such file"}},
		{"ERROR without NUL", []byte("\x00\x05\x00\x02denied"), &Error{Code: ErrAccess, Message: "denied"}},
		{"OACK", []byte("\x00\x06windowsize\x0016\x00"), &OptionAck{Options: []Option{{"windowsize", "16"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode(tt.in)
			if err != nil {
				t.Fatalf("Decode(%q): %v", tt.in, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Decode(%q) mismatch (-want +got):\n%s", tt.in, diff)
			}
		})
	}
	for _, bad := range []string{"", "\x00", "\x00\x01", "\x00\x01a", "\x00\x01a\x00", "\x00\x01\x00octet\x00",
		"\x00\x01a\x00octet\x00opt\x00", "\x00\x01a\x00octet\x00\x00v\x00", "\x00\x03\x00", "\x00\x04\x00", "\x00\x05\x00", "\x00\x07", "\x00\x06x"} {
		if p, err := Decode([]byte(bad)); err == nil {
			t.Errorf("Decode(%q) = %#v, want an error", bad, p)
		}
	}
}

// FuzzDecode checks that no input makes Decode panic, and that what it
// decodes encodes back to a packet that decodes the same.
func FuzzDecode(f *testing.F) {
	for _, seed := range []string{
		"\x00\x01boot\x00octet\x00", "\x00\x02r\x00octet\x00blksize\x001468\x00tsize\x0042\x00",
		"\x00\x03\x00\x01abc", "\x00\x04\x00\x01", "\x00\x05\x00\x01x\x00", "\x00\x06windowsize\x0016\x00", "\x00",
		"\x00\x05\x00\x00" + strings.Repeat("long message ", 50),
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Decode(b)
		if err != nil {
			return
		}
		again, err := Decode(Encode(p))
		if err != nil {
			t.Fatalf("Decode(Encode(%#v)): %v", p, err)
		}
		if diff := cmp.Diff(p, again); diff != "" {
			t.Fatalf("Decode(Encode(Decode(%q))) differs (-first +again):\n%s", b, diff)
		}
		if e, ok := p.(*Error); ok && bytes.IndexByte([]byte(e.Message), 0) >= 0 {
			t.Fatalf("error message %q holds a NUL", e.Message)
		}
	})
}

func TestRules(t *testing.T) {
	tests := []struct {
		rule      string
		op        Op
		name      string
		want      string
		wantMatch bool
	}{
		{`Gr ^/?(.+)$ /build/default/get/\1`, OpRead, "/manifest", "/build/default/get/manifest", true},
		{`Gr ^/?(.+)$ /build/default/get/\1`, OpRead, "a/b", "/build/default/get/a/b", true},
		{`Gr ^/?(.+)$ /build/default/get/\1`, OpWrite, "a", "", false},
		{`Pr ^/?(.+)$ put/\1`, OpWrite, "result.manifest", "put/result.manifest", true},
		{`r \.gz$ .tar.gz`, OpRead, "x.gz", "x.tar.gz", true},
		{`r \.gz$ .tar.gz`, OpWrite, "x.gz", "x.tar.gz", true},
		{`G boot kernels/vmlinuz`, OpRead, "boot", "kernels/vmlinuz", true},
		{`G boot kernels/vmlinuz`, OpRead, "boot2", "", false},
		{`Gr ^(a)(b)?$ \2\1\0\\`, OpRead, "a", `aa\`, true},
	}
	for _, tt := range tests {
		t.Run(tt.rule+" "+tt.name, func(t *testing.T) {
			r, err := ParseRule(tt.rule)
			if err != nil {
				t.Fatalf("ParseRule(%q): %v", tt.rule, err)
			}
			got, ok := r.Apply(tt.op, tt.name)
			if got != tt.want || ok != tt.wantMatch {
				t.Errorf("ParseRule(%q).Apply(%v, %q) = %q, %v; want %q, %v", tt.rule, tt.op, tt.name, got, ok, tt.want, tt.wantMatch)
			}
			again, err := ParseRule(r.String())
			if err != nil || again.String() != r.String() {
				t.Errorf("ParseRule(%q.String()) = %v, %v", tt.rule, again, err)
			}
		})
	}
	for _, bad := range []string{"", "Gr", "Gr a", "Gr a b c", "X a b", "Gr ( x", `G a \1`, `Gr (a) \2`, `Gr a b\`} {
		if r, err := ParseRule(bad); err == nil {
			t.Errorf("ParseRule(%q) = %v, want an error", bad, r)
		}
	}
}
