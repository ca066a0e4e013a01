package image

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"text/tabwriter"

	"github.com/buildfarm/buildfarm/internal/initramfs"
)

// Usage is the space one member of an initramfs takes, uncompressed.
type Usage struct {
	Path string
	Mode fs.FileMode
	Size int64
}

// Report says what takes the space in an initramfs.
type Report struct {
	Members  []Usage // biggest first, then by path
	Total    int64   // the members' sizes added up
	Files    int     // regular files
	FileSize int64   // of the initramfs file itself (compressed, if it is)
}

// Inspect reads the initramfs file (cpio newc, each segment uncompressed or
// gzip'd) and reports its members by size.
func Inspect(file string) (*Report, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	r := &Report{FileSize: fi.Size()}
	err = initramfs.Walk(f, func(h initramfs.Header, content io.Reader) error {
		r.Members = append(r.Members, Usage{Path: h.Path, Mode: h.Mode, Size: h.Size})
		r.Total += h.Size
		if h.Mode.IsRegular() {
			r.Files++
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", file, err)
	}
	sort.SliceStable(r.Members, func(i, j int) bool {
		a, b := r.Members[i], r.Members[j]
		if a.Size != b.Size {
			return a.Size > b.Size
		}
		return a.Path < b.Path
	})
	return r, nil
}

// Print writes the report as a table: size, share of the total and path
// for the top members (all when top <= 0), then the total.
func (r *Report) Print(w io.Writer, top int) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "SIZE\tSHARE\t  PATH\n")
	shown := r.Members
	if top > 0 && len(shown) > top {
		shown = shown[:top]
	}
	for _, m := range shown {
		if m.Size == 0 {
			break
		}
		fmt.Fprintf(tw, "%s\t%.1f%%\t  %s\n", HumanSize(m.Size), share(m.Size, r.Total), m.Path)
	}
	if rest := len(r.Members) - len(shown); rest > 0 {
		var size int64
		for _, m := range r.Members[len(shown):] {
			size += m.Size
		}
		fmt.Fprintf(tw, "%s\t%.1f%%\t  (%d more)\n", HumanSize(size), share(size, r.Total), rest)
	}
	fmt.Fprintf(tw, "%s\t100.0%%\t  total: %d members, %d files; the file is %s (%.1f%%)\n",
		HumanSize(r.Total), len(r.Members), r.Files, HumanSize(r.FileSize), share(r.FileSize, r.Total))
	return tw.Flush()
}

func share(n, total int64) float64 {
	if total == 0 {
		return 0
	}
	return 100 * float64(n) / float64(total)
}

// HumanSize formats a byte count with a binary unit: "1.9 MiB".
func HumanSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
