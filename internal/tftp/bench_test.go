package tftp

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"testing"
)

// BenchmarkGet measures our client and server together on loopback; the
// comparison with tftpd-hpa is bench/tftp's.
func BenchmarkGet(b *testing.B) {
	root := b.TempDir()
	const size = 8 << 20
	if err := writeFileErr(filepath.Join(root, "f"), randomBytes(size, 1)); err != nil {
		b.Fatal(err)
	}
	addr := testServer(b, &Server{Root: root})
	for _, opt := range []Options{{BlockSize: 1468}, {BlockSize: 1468, WindowSize: 16}, {BlockSize: 65464}, {BlockSize: 65464, WindowSize: 4}} {
		b.Run(fmt.Sprintf("blksize=%d/windowsize=%d", opt.BlockSize, opt.WindowSize), func(b *testing.B) {
			b.SetBytes(size)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Get(context.Background(), addr, "f", io.Discard, opt); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
