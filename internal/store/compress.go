package store

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"sync"
)

// encodingGzip names how results are compressed in the results table's
// encoding column.
const encodingGzip = "gzip"

var gzipWriters = sync.Pool{New: func() any {
	w, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed) // the level is valid
	return w
}}

// compress returns data compressed for storing, and the encoding's name.
// Logs repeat themselves, so the fastest level already shrinks them well.
func compress(data []byte) (string, []byte, error) {
	var buf bytes.Buffer
	buf.Grow(len(data)/4 + 64)
	w := gzipWriters.Get().(*gzip.Writer)
	defer gzipWriters.Put(w)
	w.Reset(&buf)
	if _, err := w.Write(data); err != nil {
		return "", nil, fmt.Errorf("compress result: %w", err)
	}
	if err := w.Close(); err != nil {
		return "", nil, fmt.Errorf("compress result: %w", err)
	}
	return encodingGzip, buf.Bytes(), nil
}

// decompress undoes compress; size is the length before compression, as
// stored beside the data.
func decompress(encoding string, data []byte, size int64) ([]byte, error) {
	switch encoding {
	case encodingGzip:
		r, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("decompress result: %w", err)
		}
		out := bytes.NewBuffer(make([]byte, 0, min(max(size, 0), 64<<20)))
		if _, err := io.Copy(out, r); err != nil {
			return nil, fmt.Errorf("decompress result: %w", err)
		}
		return out.Bytes(), nil
	case "", "identity":
		return data, nil
	}
	return nil, fmt.Errorf("decompress result: unknown encoding %q", encoding)
}
