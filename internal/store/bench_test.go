package store

import (
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/store/pgtest"
)

// BenchmarkClaimComplete measures what a controller's store does per task:
// a claim and the result's completion (a 4 KiB manifest), by several
// goroutines at once, as the HTTP handlers of agents' requests would.
// SQLite commits without fsync (WAL, synchronous=NORMAL: durable across a
// crash of the process, not of the machine); pgtest's server runs with
// fsync off.
func BenchmarkClaimComplete(b *testing.B) {
	b.Run("sqlite", func(b *testing.B) {
		benchClaimComplete(b, filepath.Join(b.TempDir(), "bench.db"))
	})
	b.Run("postgres", func(b *testing.B) {
		dsn, err := pgtest.NewServer(b).NewDatabase(b.Context())
		if err != nil {
			b.Fatal(err)
		}
		benchClaimComplete(b, dsn)
	})
}

func benchClaimComplete(b *testing.B, dsn string) {
	s := openDSN(b, dsn)
	ctx := b.Context()
	manifest := bigLog()[:4096]
	const batch = 1000
	for done := 0; done < b.N; done += batch {
		var tasks []*Task
		for range min(batch, b.N-done) {
			tasks = append(tasks, &Task{Config: "c", Manifest: "name: bench\nversion: 1\n"})
		}
		if err := s.Submit(ctx, &Submission{Name: "bench", Version: "1"}, tasks); err != nil {
			b.Fatal(err)
		}
	}
	var n atomic.Int64
	machines := map[string]string{"c": "c-machine", "other": "o"}
	b.ResetTimer()
	b.SetParallelism(4)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			session := fmt.Sprintf("bench-%d", n.Add(1))
			now := time.Now()
			if _, err := s.Claim(ctx, Claim{Agent: "agent", Session: session, Machines: machines,
				Now: now, LeaseUntil: now.Add(time.Hour)}); err != nil {
				b.Error(err)
				return
			}
			if _, err := s.Complete(ctx, Result{Session: session, Status: "success", Manifest: manifest, Now: now}, 3); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
}
