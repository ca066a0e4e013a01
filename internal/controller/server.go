package controller

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/buildfarm/buildfarm/internal/store"
)

// Options configure a controller. DefaultOptions has the defaults.
type Options struct {
	// Listen is the address to listen on (host:port; port 0 picks one).
	Listen string
	// URL is the controller's public base URL (scheme://host[:port][/path]),
	// from which result and archive URLs are made. Empty: each request's
	// own scheme and Host.
	URL string
	// Buildtab holds the build configurations (nil: DefaultBuildtab).
	Buildtab *Buildtab
	// TLSCert and TLSKey are PEM files; both set serves HTTPS.
	TLSCert, TLSKey string
	// AdminToken, if set, is needed by the submit API's writes.
	AdminToken string
	// Insecure allows an admin token on a non-loopback plain-HTTP
	// listener.
	Insecure bool
	// Auth says when agents must authenticate.
	Auth AuthMode
	// LongPoll bounds how long a task request with Buildfarm-Wait is held.
	LongPoll time.Duration
	// BuildTimeout is a task's default and longest build timeout.
	BuildTimeout time.Duration
	// LeaseMargin is added to a task's build timeout for a session's
	// lease.
	LeaseMargin time.Duration
	// MaxAttempts is how many sessions a task gets before it ends
	// abnormal.
	MaxAttempts int
	// MaxArchive bounds an uploaded or fetched sources archive, in bytes.
	MaxArchive int64
	// ExpireInterval is how often expired leases are looked for.
	ExpireInterval time.Duration
	// PollInterval is how often a held task request tries to claim a
	// task again (finding tasks that other controllers queued).
	PollInterval time.Duration
	// LiveLogLimit bounds a session's live log, in bytes: past it, the
	// rest is dropped, and the timeline and the page say so.
	LiveLogLimit int64
	// LiveLogKeep is how long the live log of a finished task is kept
	// (its result's log is the authoritative copy).
	LiveLogKeep time.Duration
}

// DefaultOptions returns the controller's defaults.
func DefaultOptions() Options {
	return Options{
		Listen:         "127.0.0.1:8080",
		Auth:           AuthAuto,
		LongPoll:       30 * time.Second,
		BuildTimeout:   3 * time.Hour,
		LeaseMargin:    10 * time.Minute,
		MaxAttempts:    3,
		MaxArchive:     256 << 20,
		ExpireInterval: 5 * time.Second,
		PollInterval:   100 * time.Millisecond,
		LiveLogLimit:   1 << 20,
		LiveLogKeep:    24 * time.Hour,
	}
}

// Body limits of the protocol, as brep has them.
const (
	MaxTaskRequest   = 100 << 10
	MaxResultRequest = 15 << 20
)

// Server is a controller. Make one with New, then Listen and Serve (or
// Run); Handler serves without a listener of its own.
type Server struct {
	opts  Options
	store store.Store
	log   *slog.Logger
	wake  broadcast
	seen  seenAgents // agents recorded lately (SeeAgent throttled)

	liveWake broadcast // a live log chunk or event was stored (web.go's streams)
	metrics  *metrics

	// keysSeen caches whether any agent key is registered (AuthAuto).
	keysMu   sync.Mutex
	keysAt   time.Time
	keysSeen bool

	ln        net.Listener
	url       string
	localOnly bool // loopback listener and no public URL: token-less submits allowed
	stopping  chan struct{}
	stopOnce  sync.Once
	tlsConfig *tls.Config
}

// New checks opts and returns a controller on st.
func New(st store.Store, opts Options, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Buildtab == nil {
		opts.Buildtab = DefaultBuildtab()
	}
	switch {
	case opts.LongPoll < 0:
		return nil, fmt.Errorf("long-poll %v: negative", opts.LongPoll)
	case opts.BuildTimeout <= 0:
		return nil, fmt.Errorf("build-timeout %v: not positive", opts.BuildTimeout)
	case opts.LeaseMargin < 0:
		return nil, fmt.Errorf("lease-margin %v: negative", opts.LeaseMargin)
	case opts.MaxAttempts < 1:
		return nil, fmt.Errorf("max-attempts %d: less than 1", opts.MaxAttempts)
	case opts.MaxArchive <= 0:
		return nil, fmt.Errorf("max-archive %d: not positive", opts.MaxArchive)
	case opts.ExpireInterval <= 0:
		return nil, fmt.Errorf("expire interval %v: not positive", opts.ExpireInterval)
	case opts.PollInterval <= 0:
		return nil, fmt.Errorf("poll interval %v: not positive", opts.PollInterval)
	case opts.LiveLogLimit <= 0:
		return nil, fmt.Errorf("live-log-limit %d: not positive", opts.LiveLogLimit)
	case opts.LiveLogKeep <= 0:
		return nil, fmt.Errorf("live log keep %v: not positive", opts.LiveLogKeep)
	case (opts.TLSCert == "") != (opts.TLSKey == ""):
		return nil, errors.New("tls-cert and tls-key go together")
	}
	if _, err := ParseAuthMode(string(opts.Auth)); err != nil {
		return nil, err
	}
	if opts.URL != "" {
		u, err := url.Parse(opts.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("url %q: not an http or https URL without query", opts.URL)
		}
		opts.URL = strings.TrimSuffix(opts.URL, "/")
	}
	return &Server{opts: opts, store: st, log: log, stopping: make(chan struct{}), metrics: newMetrics(st)}, nil
}

// Listen opens the listener. It refuses an admin token on a plain-HTTP
// listener that is not on loopback, unless Options.Insecure.
func (s *Server) Listen() error {
	if s.opts.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(s.opts.TLSCert, s.opts.TLSKey)
		if err != nil {
			return fmt.Errorf("tls-cert %s, tls-key %s: %w", s.opts.TLSCert, s.opts.TLSKey, err)
		}
		s.tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	host, _, err := net.SplitHostPort(s.opts.Listen)
	if err != nil {
		return fmt.Errorf("listen %q: %w", s.opts.Listen, err)
	}
	loopback := isLoopbackHost(host)
	if s.opts.AdminToken != "" && s.tlsConfig == nil && !loopback && !s.opts.Insecure {
		return fmt.Errorf("listen %s: refusing an admin token on plain HTTP off loopback (serve TLS with --tls-cert and --tls-key, listen on loopback behind a TLS proxy, or accept the risk with --insecure)", s.opts.Listen)
	}
	ln, err := net.Listen("tcp", s.opts.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.opts.Listen, err)
	}
	s.ln = ln
	scheme := "http"
	if s.tlsConfig != nil {
		scheme = "https"
	}
	s.url = scheme + "://" + ln.Addr().String()
	s.localOnly = loopback && s.opts.URL == ""
	return nil
}

// URL is the base URL the controller listens on, after Listen: with port
// 0 asked for, it has the port picked.
func (s *Server) URL() string { return s.url }

// Serve serves on the listener until ctx ends, then shuts down: held task
// requests are answered with no task, and requests in flight get up to
// 10 s to finish. It runs the lease expiry loop meanwhile.
func (s *Server) Serve(ctx context.Context) error {
	if s.ln == nil {
		return errors.New("serve: not listening (call Listen first)")
	}
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		TLSConfig:         s.tlsConfig,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { s.expireLoop(ctx) })
	errc := make(chan error, 1)
	go func() {
		if s.tlsConfig != nil {
			errc <- srv.ServeTLS(s.ln, "", "")
		} else {
			errc <- srv.Serve(s.ln)
		}
	}()
	s.log.Info("controller serving", "url", s.url, "public_url", s.opts.URL, "auth", s.opts.Auth,
		"configurations", len(s.opts.Buildtab.Configs), "admin_token", s.opts.AdminToken != "")
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		s.log.Info("controller stopping")
		s.stop()
		sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		err = srv.Shutdown(sctx)
		scancel()
		if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && err == nil {
			err = serr
		}
	}
	cancel()
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// Run is Listen, then Serve until ctx ends; announce, if not nil, is
// called with URL once listening.
func (s *Server) Run(ctx context.Context, announce func(url string)) error {
	if err := s.Listen(); err != nil {
		return err
	}
	if announce != nil {
		announce(s.URL())
	}
	return s.Serve(ctx)
}

func (s *Server) stop() { s.stopOnce.Do(func() { close(s.stopping) }) }

// Handler returns the controller's HTTP handler (see the package
// documentation for its endpoints).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /task", s.handleTask)
	mux.HandleFunc("POST /result", s.handleResult)
	mux.HandleFunc("POST /{$}", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Has("build-result") {
			s.handleResult(w, r)
			return
		}
		s.handleTask(w, r)
	})
	mux.HandleFunc("GET /archives/{sha256}", s.handleGetArchive)
	mux.HandleFunc("PUT /api/v1/archives", s.admin(s.handlePutArchive))
	mux.HandleFunc("POST /api/v1/archives", s.admin(s.handlePutArchive))
	mux.HandleFunc("POST /api/v1/submissions", s.admin(s.handleSubmit))
	mux.HandleFunc("GET /api/v1/submissions", s.handleSubmissions)
	mux.HandleFunc("GET /api/v1/submissions/{id}", s.handleSubmission)
	mux.HandleFunc("GET /api/v1/tasks/{id}", s.handleTaskInfo)
	mux.HandleFunc("GET /api/v1/tasks/{id}/result", s.handleTaskResult)
	mux.HandleFunc("GET /api/v1/queue", s.handleQueue)
	mux.HandleFunc("GET /api/v1/agents", s.handleAgents)
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		apiError(w, http.StatusNotFound, fmt.Errorf("%s %s: no such API endpoint", r.Method, r.URL.Path))
	})
	mux.HandleFunc("POST /live/log", s.handleLiveLog)
	mux.HandleFunc("POST /live/event", s.handleLiveEvent)
	mux.HandleFunc("POST /live/poll", s.handleLivePoll)
	mux.Handle("GET /metrics", s.metrics.handler())
	s.webRoutes(mux)
	return s.metrics.count(mux)
}

// expireLoop ends the sessions whose lease ran out, at start and every
// ExpireInterval, and wakes the held task requests when tasks were queued
// again; every pruneEvery it deletes the live logs of tasks finished
// longer than LiveLogKeep ago.
func (s *Server) expireLoop(ctx context.Context) {
	t := time.NewTicker(s.opts.ExpireInterval)
	defer t.Stop()
	var pruned time.Time
	for {
		tasks, err := s.store.Expire(ctx, time.Now(), s.opts.MaxAttempts)
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.Error("expire leases", "err", err)
		case len(tasks) > 0:
			for _, t := range tasks {
				s.log.Info("lease expired", "task", t.ID, "name", t.Name, "config", t.Config, "agent", t.Agent, "state", t.State, "reason", t.Reason)
			}
			s.wake.notify()
		}
		if time.Since(pruned) >= pruneEvery {
			pruned = time.Now()
			if n, err := s.store.PruneLiveLogs(ctx, pruned.Add(-s.opts.LiveLogKeep)); err != nil && ctx.Err() == nil {
				s.log.Warn("prune live logs", "err", err)
			} else if n > 0 {
				s.log.Debug("live logs pruned", "chunks", n)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// pruneEvery is how often the expiry loop deletes old live logs.
const pruneEvery = 10 * time.Minute

// baseURL is the URL agents reach this controller at, for result and
// archive URLs: Options.URL, or the request's scheme and Host.
func (s *Server) baseURL(r *http.Request) string {
	if s.opts.URL != "" {
		return s.opts.URL
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// broadcast wakes every waiter at once: wait returns a channel that the
// next notify closes.
type broadcast struct {
	mu sync.Mutex
	ch chan struct{}
}

func (b *broadcast) wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch == nil {
		b.ch = make(chan struct{})
	}
	return b.ch
}

func (b *broadcast) notify() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch != nil {
		close(b.ch)
		b.ch = nil
	}
}
