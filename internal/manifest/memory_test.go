package manifest

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The memory a parse needs, as a multiple of the text it reads. The test
// counts every byte Parse allocates with the collector off (what it
// allocated is then its peak, an upper bound of the heap it holds at any
// moment); the benchmark also samples the heap in use with the collector
// on. Parse's own copy of the text is counted, the caller's is not.

// memoryInputs are the worst cases of the hardening issue, scaled by n/10
// (10 is the size): the most manifests and the most pairs for their
// bytes, values that are copies, and text that holds no pair.
func memoryInputs(n int) map[string]string {
	var tiny, seps, pairs, empty, comments, long, cont, multi, crlf strings.Builder
	for range 20_000 * n {
		tiny.WriteString(": 1\nname: xyz\n") // 15 bytes a manifest
	}
	seps.WriteString(": 1\n")
	for range 100_000 * n {
		seps.WriteString(":\n") // the shortest manifest: 2 bytes
	}
	pairs.WriteString(": 1\n")
	for i := range 100_000 * n {
		fmt.Fprintf(&pairs, "name: %09d\n", i) // 16 bytes a pair
	}
	empty.WriteString(": 1\n")
	for range 100_000 * n {
		empty.WriteString("a:\n") // the shortest pair: 3 bytes
	}
	comments.WriteString(": 1\n")
	for range 50_000 * n {
		comments.WriteString("# a comment\n\na:\n")
	}
	v := strings.Repeat("0123456789", 8)
	long.WriteString(": 1\nvalue: ")
	cont.WriteString(": 1\nvalue: ")
	for range 5 << 20 * n / 80 {
		long.WriteString(v)
		cont.WriteString(v + "\\\n")
	}
	long.WriteString("\n")
	multi.WriteString(": 1\n")
	crlf.WriteString(": 1\r\n")
	for range 20_000 * n {
		multi.WriteString("v:\\\nab\ncd\n\\\n")        // multi-line values
		crlf.WriteString("v:\\\r\nab\r\ncd\r\n\\\r\n") // copies once read
	}
	return map[string]string{
		"tiny-manifests": tiny.String(), "separators": seps.String(),
		"pairs": pairs.String(), "empty-values": empty.String(), "comments": comments.String(),
		"long-value": long.String(), "long-value-escaped": cont.String(),
		"multi-line": multi.String(), "multi-line-crlf": crlf.String(),
	}
}

// sortedInputs returns memoryInputs(n) in the order of their names.
func sortedInputs(n int) (names []string, texts map[string]string) {
	texts = memoryInputs(n)
	for name := range texts {
		names = append(names, name)
	}
	slices.Sort(names)
	return names, texts
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

// peakHeap returns the most the heap in use (live objects and garbage not
// yet freed) grew over its size before f, sampled every 20µs while f runs
// with the collector on, and at its end. f returns what it built, so that
// it is held until the last sample.
func peakHeap(f func() any) uint64 {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() uint64 { metrics.Read(sample); return sample[0].Value.Uint64() }
	runtime.GC()
	base := read()
	var peak atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(20 * time.Microsecond)
		defer t.Stop()
		for {
			if h := read(); h > peak.Load() {
				peak.Store(h)
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	kept := f()
	if h := read(); h > peak.Load() {
		peak.Store(h)
	}
	close(stop)
	<-done
	runtime.KeepAlive(kept)
	if p := peak.Load(); p > base {
		return p - base
	}
	return 0
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

// unsized hides the length of a reader, as a pipe or a network body does.
type unsized struct{ io.Reader }

var unlimited = Limits{Manifests: 1 << 30, Pairs: 1 << 30}

// memorySlack is what a parse may allocate beside its multiple of the text:
// the chunk of a reader of unknown length, the odd small slice.
const memorySlack = 64 << 10

// TestParseMemory checks, at a tenth of the sizes, that decoding
// pair by pair and Parse each allocate at most 4 times the text (Parse's
// copy of the text counted) for every worst case, and that the Stream reads
// back what it parsed.
func TestParseMemory(t *testing.T) {
	names, texts := sortedInputs(1)
	for _, name := range names {
		text := texts[name]
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

		var st *Stream
		par := allocated(func() { st, err = unlimited.Parse(strings.NewReader(text), "m") })
		if err != nil {
			t.Fatalf("%s: parse: %v", name, err)
		}
		t.Logf("%s: Parse %.2f× (%d manifests, %d pairs)", name, float64(par)/float64(len(text)), st.Len(), st.PairCount())
		if par > 4*uint64(len(text))+memorySlack {
			t.Errorf("%s: Parse of %d bytes (%d manifests, %d pairs) allocated %d bytes: %.2f× the text, want at most 4×",
				name, len(text), st.Len(), st.PairCount(), par, float64(par)/float64(len(text)))
		} else if par > 2*uint64(len(text))+memorySlack { // The Stream's doc says about 1.6×.
			t.Errorf("%s: Parse of %d bytes (%d manifests, %d pairs) allocated %d bytes: %.2f× the text, more than the Stream's 2×",
				name, len(text), st.Len(), st.PairCount(), par, float64(par)/float64(len(text)))
		}
		// A reader of unknown length costs the text once more while read.
		uns := allocated(func() { _, err = unlimited.Parse(unsized{strings.NewReader(text)}, "m") })
		if err != nil {
			t.Fatalf("%s: parse unsized: %v", name, err)
		}
		t.Logf("%s: Parse of an unsized reader %.2f×", name, float64(uns)/float64(len(text)))
		if uns > 4*uint64(len(text))+memorySlack || uns > par+uint64(len(text))+memorySlack {
			t.Errorf("%s: Parse of an unsized reader of %d bytes allocated %d bytes (%.2f×), a sized one %d: want at most 4× and one more copy",
				name, len(text), uns, float64(uns)/float64(len(text)), par)
		}
		// What the Stream holds reads back as the pairs the stream has.
		np := 0
		for i := range st.Len() {
			for p := range st.Pairs(i) {
				if np++; p.Name == "" && p.Value != "1" || p.Name != "" && p.Line < 1 {
					t.Fatalf("%s: manifest %d reads back pair %+v", name, i, p)
				}
			}
		}
		if np != st.PairCount() {
			t.Errorf("%s: the Stream reads back %d pairs, Parse counted %d", name, np, st.PairCount())
		}
	}
}

// TestStreamAccess checks that a manifest read on its own (its position
// found from the line table) is the one read in sequence, positions
// included, across line table blocks and every kind of newline.
func TestStreamAccess(t *testing.T) {
	var b strings.Builder
	b.WriteString("# head\r\n: 1\r\n")
	for i := range 300 {
		nl := []string{"\n", "\r\n", "\r", "\r\r\n"}[i%4]
		fmt.Fprintf(&b, "%*sname%d: v%d%s  é: x\\%sy%s%s:%s", i%3, "", i, i, nl, nl, nl, strings.Repeat("# c"+nl, i%5), nl)
	}
	text := b.String()
	st, err := unlimited.ParseString(text, "m")
	if err != nil {
		t.Fatal(err)
	}
	all := st.Manifests()
	if len(all) != st.Len() || st.Len() != 301 {
		t.Fatalf("Manifests() = %d manifests, Len() = %d, want 301", len(all), st.Len())
	}
	for i, want := range all {
		if got := st.Manifest(i); !slices.Equal(got, want) {
			t.Fatalf("Manifest(%d) = %+v, want %+v", i, got, want)
		}
	}
	if v, ok := st.Get(7, "é"); !ok || v != "xy" {
		t.Errorf("Get(7, é) = %q, %v, want xy, true", v, ok)
	}
	if v, ok := st.Get(7, "none"); ok {
		t.Errorf("Get(7, none) = %q, true, want false", v)
	}
	var none *Stream
	if none.Len() != 0 || none.Manifests() != nil {
		t.Errorf("a nil Stream has %d manifests", none.Len())
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
		st, err := tt.lim.Parse(strings.NewReader(text), "m")
		var got string
		if err != nil {
			got = err.Error()
			if var_ := (*Error)(nil); !errors.As(err, &var_) {
				t.Errorf("Limits%+v.Parse error %v is not an *Error", tt.lim, err)
			}
		} else if st.Len() != 3 || st.PairCount() != 7 {
			t.Errorf("Limits%+v.Parse = %d manifests, %d pairs, want 3, 7", tt.lim, st.Len(), st.PairCount())
		}
		if got != tt.want {
			t.Errorf("Limits%+v.Parse(%q) error = %q, want %q", tt.lim, text, got, tt.want)
		}
	}
	// The manifests do not share their pairs' arrays: appending to one
	// leaves the next alone.
	ms, _ := parseAll(strings.NewReader(text), "m")
	_ = append(ms[0], Pair{Name: "added"})
	if ms[1][0].Name != "" || ms[1][1].Name != "b" {
		t.Errorf("appending to the first manifest changed the second: %v", ms[1])
	}
}

var peakResults = flag.String("peak-results", "", "BenchmarkPeakMemory writes its figures to this JSON file")

// peakResult is one line of BenchmarkPeakMemory's figures, each a multiple
// of the text's bytes.
type peakResult struct {
	Stream       string  `json:"stream"`
	Bytes        int     `json:"bytes"`
	Manifests    int     `json:"manifests"`
	Pairs        int     `json:"pairs"`
	DecodeAlloc  float64 `json:"decode_alloc"`       // Decoder, allocated + the text
	ParseAlloc   float64 `json:"parse_alloc"`        // Parse, allocated (its copy of the text included)
	ParsePeak    float64 `json:"parse_peak"`         // Parse, peak heap in use, collector on
	UnsizedPeak  float64 `json:"parse_unsized_peak"` // Parse of a reader of unknown length, peak heap
	BuiltAlloc   float64 `json:"built_alloc"`        // Parse + Manifests(): the []Manifest form, allocated
	BuiltPeak    float64 `json:"built_peak"`         // the same, peak heap in use, collector on
	ParseSeconds float64 `json:"parse_seconds"`
}

// BenchmarkPeakMemory reports, for the worst cases at the hardening issue's
// sizes, the memory of Parse (the Stream), of decoding pair by pair (what
// `buildfarm manifest decode` does), and of the []Manifest form that Parse
// returned before the Stream (Parse then Manifests), as multiples of the
// text. With -peak-results FILE it writes them to FILE as JSON.
func BenchmarkPeakMemory(b *testing.B) {
	var results []peakResult
	names, texts := sortedInputs(10)
	for _, name := range names {
		text := texts[name]
		b.Run(name, func(b *testing.B) {
			r := peakResult{Stream: name, Bytes: len(text)}
			n := float64(len(text))
			for b.Loop() {
				r.DecodeAlloc = float64(len(text)+int(allocated(func() { decodeAll(text) }))) / n
				var st *Stream
				r.ParseAlloc = float64(allocated(func() { st, _ = unlimited.Parse(strings.NewReader(text), "m") })) / n
				r.Manifests, r.Pairs = st.Len(), st.PairCount()
				start := time.Now()
				r.ParsePeak = float64(peakHeap(func() any { st, _ := unlimited.Parse(strings.NewReader(text), "m"); return st })) / n
				r.ParseSeconds = time.Since(start).Seconds()
				r.UnsizedPeak = float64(peakHeap(func() any { st, _ := unlimited.Parse(unsized{strings.NewReader(text)}, "m"); return st })) / n
				r.BuiltAlloc = float64(allocated(func() { st, _ := unlimited.Parse(strings.NewReader(text), "m"); st.Manifests() })) / n
				r.BuiltPeak = float64(peakHeap(func() any { st, _ := unlimited.Parse(strings.NewReader(text), "m"); return st.Manifests() })) / n
			}
			b.ReportMetric(n/1e6, "MB-text")
			b.ReportMetric(r.DecodeAlloc, "decode-alloc/text")
			b.ReportMetric(r.ParseAlloc, "parse-alloc/text")
			b.ReportMetric(r.ParsePeak, "parse-peak/text")
			b.ReportMetric(r.UnsizedPeak, "unsized-peak/text")
			b.ReportMetric(r.BuiltAlloc, "built-alloc/text")
			b.ReportMetric(r.BuiltPeak, "built-peak/text")
			results = append(results, r)
		})
	}
	if *peakResults != "" && len(results) == len(names) {
		out, err := json.MarshalIndent(map[string]any{
			"benchmark": "BenchmarkPeakMemory",
			"command":   "go test -run '^$' -bench BenchmarkPeakMemory -benchtime 1x ./internal/manifest -args -peak-results FILE",
			"unit":      "multiples of the stream's bytes",
			"goal":      "parse_peak and parse_alloc at most 4",
			"results":   results,
		}, "", "  ")
		if err == nil {
			err = os.WriteFile(*peakResults, append(out, '\n'), 0o644)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}
