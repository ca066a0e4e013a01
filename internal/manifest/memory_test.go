package manifest

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"unsafe"
)

// The memory a parse needs, measured with the collector off, so that every
// byte it allocates is still held at its end: what it allocated is its peak.
// The ratio counts the text itself, held in memory by the reader.

// memoryInputs are the streams of the hardening issue, scaled by n/10 (10 is
// the size): tiny manifests, many pairs, one long value (as it is,
// and with a line continuation every 80 bytes, which makes it a copy).
func memoryInputs(n int) map[string]string {
	var tiny, pairs, long, cont strings.Builder
	for range 20_000 * n {
		tiny.WriteString(": 1\nname: xyz\n") // 15 bytes a manifest
	}
	pairs.WriteString(": 1\n")
	for i := range 100_000 * n {
		fmt.Fprintf(&pairs, "name: %09d\n", i) // 16 bytes a pair
	}
	v := strings.Repeat("0123456789", 8)
	long.WriteString(": 1\nvalue: ")
	cont.WriteString(": 1\nvalue: ")
	for range 5 << 20 * n / 80 {
		long.WriteString(v)
		cont.WriteString(v + "\\\n")
	}
	long.WriteString("\n")
	return map[string]string{"tiny-manifests": tiny.String(), "pairs": pairs.String(),
		"long-value": long.String(), "long-value-escaped": cont.String()}
}

// allocated returns the bytes f allocates, with the collector off.
func allocated(f func()) uint64 {
	runtime.GC()
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// decodeAll decodes text pair by pair, as manifest decode does.
func decodeAll(text string) error {
	if _, _, err := (Limits{}).Count(text, "m"); err != nil {
		return err
	}
	d := NewDecoder(text, "m")
	for {
		if _, _, err := d.Next(); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
	}
}

var unlimited = Limits{Manifests: 1 << 30, Pairs: 1 << 30}

// TestParseMemory checks, at a tenth of the sizes, that decoding
// pair by pair holds the text and little more (at most 4 times the text for
// any of them), and that Parse allocates its slices once at their size and
// copies no name or value it can take from the text as it is: the text, 48
// bytes a pair and 24 a manifest, and the escaped value's copy.
func TestParseMemory(t *testing.T) {
	if sz := unsafe.Sizeof(Pair{}); sz != 48 {
		t.Errorf("a Pair takes %d bytes, want 48", sz)
	}
	for name, text := range memoryInputs(1) {
		var err error
		dec := allocated(func() { err = decodeAll(text) })
		if err != nil {
			t.Fatalf("%s: decode: %v", name, err)
		}
		ratio := float64(len(text)+int(dec)) / float64(len(text))
		t.Logf("%s (%d bytes): decode %.2f×", name, len(text), ratio)
		if ratio > 4 {
			t.Errorf("%s: decoding %d bytes pair by pair allocated %d bytes: %.2f× the text, want at most 4×", name, len(text), dec, ratio)
		}

		var ms []Manifest
		par := allocated(func() { ms, err = unlimited.parse(text, "m") })
		if err != nil {
			t.Fatalf("%s: parse: %v", name, err)
		}
		np := 0
		for _, m := range ms {
			np += len(m)
		}
		bound := uint64(48*np + 24*len(ms) + 64<<10)
		if name == "long-value-escaped" {
			bound += uint64(len(text)) // the copy
		}
		t.Logf("%s: parse %.2f× (%d manifests, %d pairs)", name, float64(len(text)+int(par))/float64(len(text)), len(ms), np)
		if par > bound {
			t.Errorf("%s: Parse allocated %d bytes for %d manifests and %d pairs, want at most %d", name, par, len(ms), np, bound)
		}
	}
}

func TestParseLimits(t *testing.T) {
	text := ": 1\na: x\n:\nb: y\nc: z\n:\nd: w\n"
	tests := []struct {
		lim  Limits
		want string // the error, "" for none
	}{
		{Limits{}, ""},
		{Limits{Manifests: 3, Pairs: 7}, ""},
		{Limits{Manifests: 2}, "m:6:1: error: more than 2 manifests in the stream, the most its reader takes"},
		{Limits{Manifests: 1}, "m:3:1: error: more than 1 manifests in the stream, the most its reader takes"},
		{Limits{Pairs: 6}, "m:7:1: error: more than 6 name-value pairs in the stream, the most its reader takes"},
		{Limits{Pairs: 3}, "m:4:1: error: more than 3 name-value pairs in the stream, the most its reader takes"},
	}
	for _, tt := range tests {
		ms, err := tt.lim.Parse(strings.NewReader(text), "m")
		var got string
		if err != nil {
			got = err.Error()
			if var_ := (*Error)(nil); !errors.As(err, &var_) {
				t.Errorf("Limits%+v.Parse error %v is not an *Error", tt.lim, err)
			}
		} else if len(ms) != 3 {
			t.Errorf("Limits%+v.Parse = %d manifests, want 3", tt.lim, len(ms))
		}
		if got != tt.want {
			t.Errorf("Limits%+v.Parse(%q) error = %q, want %q", tt.lim, text, got, tt.want)
		}
	}
	// The manifests do not share their pairs' arrays: appending to one
	// leaves the next alone.
	ms, _ := Parse(strings.NewReader(text), "m")
	_ = append(ms[0], Pair{Name: "added"})
	if ms[1][0].Name != "" || ms[1][1].Name != "b" {
		t.Errorf("appending to the first manifest changed the second: %v", ms[1])
	}
}

// BenchmarkPeakMemory reports, for the hardening issue's streams at full
// size, the peak memory of Parse and of decoding pair by pair (what
// `buildfarm manifest decode` does) as a multiple of the text.
func BenchmarkPeakMemory(b *testing.B) {
	for name, text := range memoryInputs(10) {
		b.Run(name, func(b *testing.B) {
			var dec, par uint64
			for b.Loop() {
				dec = allocated(func() { decodeAll(text) })
				par = allocated(func() { unlimited.parse(text, "m") })
			}
			b.ReportMetric(float64(len(text))/1e6, "MB-text")
			b.ReportMetric(float64(len(text)+int(dec))/float64(len(text)), "decode-peak/text")
			b.ReportMetric(float64(len(text)+int(par))/float64(len(text)), "parse-peak/text")
		})
	}
}
