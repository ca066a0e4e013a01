package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/buildfarm/buildfarm/internal/tftp"
)

// agentMetrics are the agent's Prometheus metrics, served at
// http://--metrics/metrics.
type agentMetrics struct {
	reg       *prometheus.Registry
	boots     prometheus.Counter
	bootTime  prometheus.Histogram
	snapshot  prometheus.Histogram
	misboots  prometheus.Counter
	tftpBytes *prometheus.CounterVec
}

func newAgentMetrics(a *Agent) *agentMetrics {
	m := &agentMetrics{
		reg: prometheus.NewRegistry(),
		boots: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "buildfarm_agent_vm_boots_total",
			Help: "VMs that booted (made their first TFTP request).",
		}),
		bootTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "buildfarm_agent_boot_seconds",
			Help:    "Time from a VM's start to its first TFTP request.",
			Buckets: prometheus.ExponentialBuckets(0.25, 1.6, 12), // 0.25 s to ~45 s
		}),
		snapshot: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "buildfarm_agent_snapshot_seconds",
			Help:    "Time to take a task's snapshot of a bootstrapped machine.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2.5, 10), // 5 ms to ~19 s
		}),
		misboots: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "buildfarm_agent_misboots_total",
			Help: "VMs that made no TFTP request before the startup deadline.",
		}),
		tftpBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "buildfarm_agent_tftp_bytes_total",
			Help: "Bytes the guests read (get) and wrote (put) over TFTP.",
		}, []string{"direction"}),
	}
	suspended := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "buildfarm_agent_suspended_vms",
		Help: "VMs kept suspended for investigation.",
	}, func() float64 {
		a.mu.Lock()
		defer a.mu.Unlock()
		return float64(len(a.kept))
	})
	spooled := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "buildfarm_agent_results_spooled",
		Help: "Results in the spool, waiting to be delivered.",
	}, func() float64 {
		files, _ := filepath.Glob(filepath.Join(a.opts.spoolDir(), "*"+spoolSuffix))
		return float64(len(files))
	})
	m.reg.MustRegister(m.boots, m.bootTime, m.snapshot, m.misboots, m.tftpBytes, suspended, spooled,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// serveMetrics serves the metrics on --metrics until ctx ends.
func (a *Agent) serveMetrics(ctx context.Context) (stop func(), err error) {
	ln, err := net.Listen("tcp", a.opts.Metrics)
	if err != nil {
		return nil, fmt.Errorf("--metrics %s: %w", a.opts.Metrics, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("metrics server", "err", err)
		}
	}()
	a.log.Info("serving metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	return func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-done
	}, nil
}

// vmObserved is what the agent watches of a VM run: when it started, and
// the live log of its task, if any.
type vmObserved struct {
	started time.Time
	live    *liveLog
	booted  sync.Once
}

// observeStart is called when a VM run's QEMU has started.
func (a *Agent) observeStart(ctx context.Context) *vmObserved {
	return &vmObserved{started: time.Now(), live: liveFrom(ctx)}
}

// observeRequest sees each TFTP request of a VM run: the first is its
// boot; the bytes are counted; the live log and progress go to the task's
// controller.
func (a *Agent) observeRequest(r *vmRun, req tftp.Request) {
	obs := r.obs.Load()
	if obs == nil {
		obs = &vmObserved{}
	}
	obs.booted.Do(func() {
		a.metrics.boots.Inc()
		if !obs.started.IsZero() {
			a.metrics.bootTime.Observe(time.Since(obs.started).Seconds())
		}
		obs.live.event("booted", "", "", "")
	})
	dir := "get"
	if req.Op == tftp.OpWrite {
		dir = "put"
	}
	a.metrics.tftpBytes.WithLabelValues(dir).Add(float64(req.Bytes))
	if req.Op == tftp.OpWrite && req.Err == nil {
		name := strings.TrimPrefix(req.Filename, "/")
		obs.live.uploaded(r.s, name)
		if strings.HasPrefix(name, liveFilePrefix) {
			os.Remove(filepath.Join(r.s.putDir(), name)) // forwarded, or not wanted
		}
	}
}
