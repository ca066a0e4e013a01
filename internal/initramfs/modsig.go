package initramfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// sigMarker ends a kernel module with an appended signature (the kernel's
// scripts/sign-file; include/linux/module_signature.h).
const sigMarker = "~Module signature appended~\n"

// sigInfoSize is the size of struct module_signature, which precedes the
// marker: algo, hash, id_type, signer_len, key_id_len, 3 bytes of padding
// and the signature's length (big-endian 32 bits). The signer's name, the
// key's id and the signature come before it.
const sigInfoSize = 12

// ErrBadSignature means a module ends with the signature marker but its
// signature's lengths do not fit the file.
var ErrBadSignature = errors.New("malformed module signature")

// StripSignature returns the module ko without its appended signature and
// whether it had one; a module without one is returned as it is. The
// result is the module as it was before signing, which the kernel loads
// without checking a signature (unless it enforces signatures:
// CONFIG_MODULE_SIG_FORCE or module.sig_enforce), tainting itself with E.
func StripSignature(ko []byte) ([]byte, bool, error) {
	if !bytes.HasSuffix(ko, []byte(sigMarker)) {
		return ko, false, nil
	}
	n := len(ko) - len(sigMarker)
	if n < sigInfoSize {
		return nil, false, fmt.Errorf("%w: %d bytes before the marker", ErrBadSignature, n)
	}
	info := ko[n-sigInfoSize : n]
	signed := uint64(info[3]) + uint64(info[4]) + uint64(binary.BigEndian.Uint32(info[8:]))
	if signed+sigInfoSize > uint64(n) {
		return nil, false, fmt.Errorf("%w: %d bytes of signature in a %d-byte module", ErrBadSignature, signed, len(ko))
	}
	body := ko[:uint64(n-sigInfoSize)-signed]
	if !bytes.HasPrefix(body, []byte("\x7fELF")) {
		return nil, false, fmt.Errorf("%w: no ELF module before the signature", ErrBadSignature)
	}
	return body, true, nil
}
