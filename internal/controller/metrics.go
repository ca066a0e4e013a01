package controller

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/buildfarm/buildfarm/internal/store"
)

// metrics are the controller's Prometheus metrics (GET /metrics). The
// queue, the tasks by state and status and the agents are read from the
// store at each scrape, so that every controller of a farm reports the
// farm's figures; the rest count what this controller did.
type metrics struct {
	reg      *prometheus.Registry
	dispatch prometheus.Histogram
	build    *prometheus.HistogramVec
	results  *prometheus.CounterVec
	errors   *prometheus.CounterVec
}

func newMetrics(st store.Store) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		dispatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "buildfarm_dispatch_latency_seconds",
			Help:    "Time from a task's submission to its first claim by an agent.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2.5, 12), // 10 ms to ~10 min
		}),
		build: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "buildfarm_build_duration_seconds",
			Help:    "Time from a task's claim to its stored result, by machine.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 14), // 1 s to ~4.5 h
		}, []string{"machine"}),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "buildfarm_results_total",
			Help: "Results received, by status and by what became of them (stored, duplicate, requeued, abandoned).",
		}, []string{"status", "outcome"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "buildfarm_http_request_errors_total",
			Help: "HTTP requests answered with a 4xx or 5xx status, by endpoint (the route's pattern) and status code.",
		}, []string{"endpoint", "code"}),
	}
	m.reg.MustRegister(m.dispatch, m.build, m.results, m.errors, &storeCollector{st: st},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// handler serves the metrics.
func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// count wraps h: responses of 4xx and 5xx are counted by the route that
// served them.
func (m *metrics) count(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(sw, r)
		if sw.code >= 400 {
			endpoint := r.Pattern
			if endpoint == "" {
				endpoint = "unmatched"
			}
			m.errors.WithLabelValues(endpoint, http.StatusText(sw.code)).Inc()
		}
	})
}

// statusWriter remembers the status a handler answered with.
type statusWriter struct {
	http.ResponseWriter
	code        int
	wroteHeader bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.code, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wroteHeader = true
	return w.ResponseWriter.Write(b)
}

// Flush passes on to the writer (server-sent events need it).
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap gives http.ResponseController the writer underneath.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// storeCollector reads the farm's figures from the store at each scrape.
type storeCollector struct{ st store.Store }

var (
	queueDepthDesc = prometheus.NewDesc("buildfarm_queue_depth", "Tasks waiting for an agent.", nil, nil)
	queueOldest    = prometheus.NewDesc("buildfarm_queue_oldest_seconds", "How long the oldest queued task has waited.", nil, nil)
	tasksDesc      = prometheus.NewDesc("buildfarm_tasks", "Tasks by state and (for done ones) status.", []string{"state", "status"}, nil)
	agentsDesc     = prometheus.NewDesc("buildfarm_agents_seen", "Agents seen within the window: 5m, 1h, or ever (all).", []string{"within"}, nil)
	scrapeErrDesc  = prometheus.NewDesc("buildfarm_store_scrape_errors", "Store reads that failed in this scrape.", nil, nil)
)

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{queueDepthDesc, queueOldest, tasksDesc, agentsDesc, scrapeErrDesc} {
		ch <- d
	}
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	failed := 0
	if q, err := c.st.Queue(ctx); err == nil {
		ch <- prometheus.MustNewConstMetric(queueDepthDesc, prometheus.GaugeValue, float64(q.Depth))
		age := 0.0
		if q.Oldest != nil {
			age = time.Since(q.Oldest.Created).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(queueOldest, prometheus.GaugeValue, age)
	} else {
		failed++
	}
	if counts, err := c.st.TaskCounts(ctx); err == nil {
		for _, n := range counts {
			ch <- prometheus.MustNewConstMetric(tasksDesc, prometheus.GaugeValue, float64(n.N), string(n.State), n.Status)
		}
	} else {
		failed++
	}
	if as, err := c.st.Agents(ctx); err == nil {
		var m5, h1 int
		for _, a := range as {
			age := time.Since(a.LastSeen)
			if age < 5*time.Minute {
				m5++
			}
			if age < time.Hour {
				h1++
			}
		}
		ch <- prometheus.MustNewConstMetric(agentsDesc, prometheus.GaugeValue, float64(m5), "5m")
		ch <- prometheus.MustNewConstMetric(agentsDesc, prometheus.GaugeValue, float64(h1), "1h")
		ch <- prometheus.MustNewConstMetric(agentsDesc, prometheus.GaugeValue, float64(len(as)), "all")
	} else {
		failed++
	}
	ch <- prometheus.MustNewConstMetric(scrapeErrDesc, prometheus.GaugeValue, float64(failed))
}
