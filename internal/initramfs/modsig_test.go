package initramfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/buildfarm/buildfarm/internal/testenv"
)

// signed appends a PKCS#7 signature of sig bytes to ko, as sign-file does.
func signed(ko []byte, sig int) []byte {
	out := append(append([]byte(nil), ko...), bytes.Repeat([]byte{0x30}, sig)...)
	info := make([]byte, sigInfoSize)
	info[2] = 2 // PKEY_ID_PKCS7
	binary.BigEndian.PutUint32(info[8:], uint32(sig))
	return append(append(out, info...), sigMarker...)
}

func TestStripSignature(t *testing.T) {
	ko := append([]byte("\x7fELF"), bytes.Repeat([]byte{1}, 100)...)
	got, ok, err := StripSignature(signed(ko, 700))
	if err != nil || !ok || !bytes.Equal(got, ko) {
		t.Errorf("StripSignature(signed) = %d bytes, %v, %v; want the %d unsigned bytes, true", len(got), ok, err, len(ko))
	}
	got, ok, err = StripSignature(ko)
	if err != nil || ok || !bytes.Equal(got, ko) {
		t.Errorf("StripSignature(unsigned) = %d bytes, %v, %v; want it unchanged, false", len(got), ok, err)
	}
	bad := signed(ko, 700)
	binary.BigEndian.PutUint32(bad[len(bad)-len(sigMarker)-4:], 1<<31) // longer than the file
	short := signed(nil, 3)
	notELF := signed([]byte("garbage"), 10)
	for name, in := range map[string][]byte{"long signature": bad, "no module": short, "not ELF": notELF, "marker only": []byte(sigMarker)} {
		if got, _, err := StripSignature(in); !errors.Is(err, ErrBadSignature) || got != nil {
			t.Errorf("StripSignature(%s) = %d bytes, %v; want ErrBadSignature", name, len(got), err)
		}
	}
}

// TestStripSignatureDebian strips the signature of a module of the cached
// Debian kernel, which signs its modules, and finds the same ELF file.
func TestStripSignatureDebian(t *testing.T) {
	k := testenv.NeedKernel(t)
	ko, err := os.ReadFile(filepath.Join(k.Modules, "kernel/drivers/net/virtio_net.ko"))
	if err != nil {
		t.Fatal(err)
	}
	got, ok, err := StripSignature(ko)
	if err != nil || !ok {
		t.Fatalf("StripSignature(virtio_net.ko) = %v, %v; want a signature stripped", ok, err)
	}
	if len(ko)-len(got) < 256 || bytes.Contains(got, []byte(sigMarker)) {
		t.Errorf("stripped %d of %d bytes; want the whole signature (> 256 bytes) gone", len(ko)-len(got), len(ko))
	}
	f := filepath.Join(t.TempDir(), "virtio_net.ko")
	if err := os.WriteFile(f, got, 0o644); err != nil {
		t.Fatal(err)
	}
	if info, err := modinfo(f); err != nil || info["name"] != "virtio_net" {
		t.Errorf("the stripped module's .modinfo: %v, %v; want name=virtio_net", info, err)
	}
}

func FuzzStripSignature(f *testing.F) {
	f.Add(signed([]byte("\x7fELF...."), 16))
	f.Add([]byte(sigMarker))
	f.Add([]byte("\x7fELF"))
	f.Fuzz(func(t *testing.T, in []byte) {
		got, ok, err := StripSignature(in)
		switch {
		case err != nil:
			if got != nil || ok {
				t.Fatalf("StripSignature = %d bytes, %v with error %v", len(got), ok, err)
			}
		case !ok:
			if !bytes.Equal(got, in) {
				t.Fatal("an unsigned module changed")
			}
		case !bytes.HasPrefix(in, got) || len(in)-len(got) < len(sigMarker)+sigInfoSize || !bytes.HasPrefix(got, []byte("\x7fELF")):
			t.Fatalf("stripped %d of %d bytes: not a prefix, too little gone or not ELF", len(in)-len(got), len(in))
		}
	})
}
