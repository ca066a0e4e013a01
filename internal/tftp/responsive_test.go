package tftp

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/testenv"
)

// TestResponsive runs the server as the agent runs it, in a process that
// does other things, while several guests' transfers run at the worker's
// defaults (blksize 65464, lock-step): four busybox clients, each a
// process of its own like a VM, fetch a 16 MiB file over and over. Meanwhile
// the process's HTTP server (the agent's metrics, its controller client)
// is asked every 10 ms and a signal is sent to the process every 20 ms
// (the agent's SIGTERM and SIGHUP). On one P and on two, the HTTP answers
// and the signals' delivery must take at most 5 ms at the median and
// 100 ms at the 99th percentile, and every client must finish transfers
// throughout (none starved). (The 99th percentile is generous: on this
// 2-core machine with other VM tests running, it reaches 50-90 ms with
// transfers or without; the medians stay under 1 ms.)
func TestResponsive(t *testing.T) {
	testenv.NeedVM(t) // real peers, and timing: not in a plain go test
	bb := testenv.NeedProgram(t, "busybox")
	for _, procs := range []int{1, 2} {
		t.Run(fmt.Sprintf("GOMAXPROCS=%d", procs), func(t *testing.T) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
			responsive(t, bb)
		})
	}
}

const (
	responsiveMedian  = 5 * time.Millisecond
	responsiveLimit   = 100 * time.Millisecond
	responsiveClients = 4
	responsiveFor     = 4 * time.Second
)

func responsive(t *testing.T, bb string) {
	root := t.TempDir()
	const size = 16 << 20
	if err := writeFileErr(filepath.Join(root, "f"), randomBytes(size, 7)); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(testServer(t, &Server{Root: root}))
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) }))
	defer web.Close()

	ctx, cancel := context.WithTimeout(context.Background(), responsiveFor)
	defer cancel()
	var wg sync.WaitGroup

	// The guests: each fetches until the time is up, and notes how long
	// each fetch took.
	fetches := make([][]time.Duration, responsiveClients)
	errs := make([]error, responsiveClients)
	out := t.TempDir()
	for i := range responsiveClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := filepath.Join(out, strconv.Itoa(i))
			for ctx.Err() == nil {
				start := time.Now()
				err := proc.Run(context.Background(), nil, bb, "tftp", "-g", "-b", "65464", "-r", "f", "-l", local, host, port)
				if err != nil {
					errs[i] = err
					return
				}
				fetches[i] = append(fetches[i], time.Since(start))
			}
		}()
	}

	// The agent's other work: HTTP requests and signals, each timed.
	var httpTimes, sigTimes []time.Duration
	wg.Add(2)
	go func() {
		defer wg.Done()
		c := web.Client()
		for tick := time.NewTicker(10 * time.Millisecond); ctx.Err() == nil; <-tick.C {
			start := time.Now()
			resp, err := c.Get(web.URL)
			if err != nil {
				t.Errorf("GET %s: %v", web.URL, err)
				return
			}
			resp.Body.Close()
			httpTimes = append(httpTimes, time.Since(start))
		}
	}()
	go func() {
		defer wg.Done()
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGUSR1)
		defer signal.Stop(sig)
		for tick := time.NewTicker(20 * time.Millisecond); ctx.Err() == nil; <-tick.C {
			start := time.Now()
			syscall.Kill(os.Getpid(), syscall.SIGUSR1)
			select {
			case <-sig:
				sigTimes = append(sigTimes, time.Since(start))
			case <-time.After(time.Second):
				t.Errorf("SIGUSR1 not delivered within 1 s")
				return
			}
		}
	}()
	wg.Wait()

	for i, err := range errs {
		if err != nil {
			t.Errorf("client %d: %v", i, err)
		}
	}
	for name, ds := range map[string][]time.Duration{"HTTP answer": httpTimes, "signal delivery": sigTimes} {
		p50, p99, worst := percentiles(ds)
		t.Logf("%s: %d samples, p50 %v, p99 %v, max %v", name, len(ds), p50, p99, worst)
		if len(ds) < 20 {
			t.Errorf("%s: only %d samples in %v", name, len(ds), responsiveFor)
		}
		if p50 > responsiveMedian {
			t.Errorf("%s: median %v, want at most %v while transfers run", name, p50, responsiveMedian)
		}
		if p99 > responsiveLimit {
			t.Errorf("%s: p99 %v, want at most %v while transfers run", name, p99, responsiveLimit)
		}
	}
	// Every guest's transfers progressed: each finished a fetch, and none
	// waited much longer than the others (a starved transfer would).
	var all []time.Duration
	for i, ds := range fetches {
		if len(ds) == 0 {
			t.Errorf("client %d finished no fetch in %v", i, responsiveFor)
		}
		all = append(all, ds...)
	}
	if len(all) > 0 {
		p50, _, worst := percentiles(all)
		t.Logf("fetches of %d MiB: %d, p50 %v, max %v", size>>20, len(all), p50, worst)
		if worst > 10*p50+time.Second {
			t.Errorf("slowest fetch took %v, against a median of %v: a transfer starved", worst, p50)
		}
	}
}

// percentiles returns the median, the 99th percentile and the maximum.
func percentiles(ds []time.Duration) (p50, p99, worst time.Duration) {
	if len(ds) == 0 {
		return 0, 0, 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2], s[(len(s)*99)/100], s[len(s)-1]
}
