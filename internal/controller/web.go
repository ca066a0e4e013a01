package controller

import (
	"bytes"
	"cmp"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/buildfarm/buildfarm/internal/store"
)

// The dashboard: server-rendered pages (html/template, so that every
// field and every log is escaped), with their assets embedded, and a few
// lines of our own JavaScript that follow a running build through
// server-sent events. Reading is open, as the API's is; cancel and rebuild
// need the admin token: its holder signs in once with a form (the session
// is a cookie signed with the token, HttpOnly, SameSite=Strict, Secure
// over HTTPS), and each form carries a CSRF token that must match its
// cookie, from a page of the same origin.

//go:embed templates static
var webFiles embed.FS

// Cookies and form fields of the dashboard.
const (
	adminCookie = "buildfarm_admin"
	csrfCookie  = "buildfarm_csrf"
	csrfField   = "csrf"
	// webSessionLife is how long a sign-in lasts.
	webSessionLife = 12 * time.Hour
	// maxForm bounds a form's body.
	maxForm = 8 << 10
)

// pages are the dashboard's templates, each with the layout.
var pages = func() map[string]*template.Template {
	funcs := template.FuncMap{
		"statusClass": statusClass,
		"when":        when,
		"ago":         ago,
		"taskStatus":  taskStatus,
		"query":       query,
		"add":         func(a, b int) int { return a + b },
		"statuses": func() []string {
			return append(slices.Clone(filterStates), "success", "warning", "error", "abort", "abnormal", "skip", "interrupt")
		},
	}
	m := map[string]*template.Template{}
	names, err := fs.Glob(webFiles, "templates/*.html")
	if err != nil {
		panic(err)
	}
	for _, n := range names {
		if strings.HasSuffix(n, "/layout.html") {
			continue
		}
		m[strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")] = template.Must(
			template.New("").Funcs(funcs).ParseFS(webFiles, "templates/layout.html", n))
	}
	return m
}()

// page is what every page's template gets.
type page struct {
	Title string
	Nav   string // which menu entry is current
	CSRF  string
	Admin bool   // the visitor may cancel and rebuild
	Token bool   // the controller has an admin token (signing in means something)
	Flash string // a message after a form
	Data  any
}

func (s *Server) webRoutes(mux *http.ServeMux) {
	static, _ := fs.Sub(webFiles, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /{$}", s.pageBuilds)
	mux.HandleFunc("GET /builds", s.pageBuilds)
	mux.HandleFunc("GET /builds/{id}", s.pageBuild)
	mux.HandleFunc("GET /builds/{id}/details", s.pageBuildDetails)
	mux.HandleFunc("GET /builds/{id}/log", s.rawLog)
	mux.HandleFunc("GET /builds/{id}/events", s.streamBuild)
	mux.HandleFunc("POST /builds/{id}/cancel", s.formCancel)
	mux.HandleFunc("POST /builds/{id}/rebuild", s.formRebuild)
	mux.HandleFunc("GET /submissions", s.pageSubmissions)
	mux.HandleFunc("GET /submissions/{id}", s.pageSubmission)
	mux.HandleFunc("GET /agents", s.pageAgents)
	mux.HandleFunc("GET /machines", s.pageMachines)
	mux.HandleFunc("GET /queue", s.pageQueue)
	mux.HandleFunc("GET /login", s.pageLogin)
	mux.HandleFunc("POST /login", s.formLogin)
	mux.HandleFunc("POST /logout", s.formLogout)

	mux.HandleFunc("GET /api/v1/builds", s.handleBuildsJSON)
	mux.HandleFunc("GET /api/v1/builds/{id}", s.handleBuildJSON)
	mux.HandleFunc("GET /api/v1/builds/{id}/log", s.handleBuildLogJSON)
	mux.HandleFunc("GET /api/v1/machines", s.handleMachinesJSON)
	mux.HandleFunc("POST /api/v1/tasks/{id}/cancel", s.admin(s.handleCancelJSON))
	mux.HandleFunc("POST /api/v1/tasks/{id}/rebuild", s.admin(s.handleRebuildJSON))
}

// render writes a page; tmpl names the template to run ("layout" for a
// whole page).
func (s *Server) render(w http.ResponseWriter, r *http.Request, name, tmpl string, p page) {
	p.CSRF = s.csrfToken(w, r)
	p.Admin = s.webAdmin(r) == nil
	p.Token = s.opts.AdminToken != ""
	if p.Flash == "" {
		p.Flash = r.URL.Query().Get("flash")
	}
	var b bytes.Buffer
	if err := pages[name].ExecuteTemplate(&b, tmpl, p); err != nil {
		s.log.Error("page", "page", name, "err", err)
		http.Error(w, "the page could not be made: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Referrer-Policy", "same-origin")
	w.Write(b.Bytes())
}

// pageError answers a page's error as text with its status.
func (s *Server) pageError(w http.ResponseWriter, r *http.Request, err error) {
	code := http.StatusInternalServerError
	var br *badRequest
	switch {
	case errors.As(err, &br):
		code = br.code
	case errors.Is(err, store.ErrNotFound):
		code = http.StatusNotFound
	}
	if code >= 500 {
		s.log.Error("page failed", "path", r.URL.Path, "err", err)
	}
	http.Error(w, err.Error(), code)
}

func (s *Server) pageBuilds(w http.ResponseWriter, r *http.Request) {
	l, err := s.buildList(r)
	if err != nil {
		s.pageError(w, r, err)
		return
	}
	s.render(w, r, "builds", "layout", page{Title: "Builds", Nav: "builds", Data: l})
}

func (s *Server) pageBuild(w http.ResponseWriter, r *http.Request) {
	s.buildPage(w, r, "layout")
}

// pageBuildDetails is the part of a build's page that its script replaces
// when the build's state changes.
func (s *Server) pageBuildDetails(w http.ResponseWriter, r *http.Request) {
	s.buildPage(w, r, "details")
}

func (s *Server) buildPage(w http.ResponseWriter, r *http.Request, tmpl string) {
	id, err := pathID(r)
	if err != nil {
		s.pageError(w, r, err)
		return
	}
	b, err := s.build(r, id)
	if err != nil {
		s.pageError(w, r, err)
		return
	}
	s.render(w, r, "build", tmpl, page{Title: fmt.Sprintf("Build %d: %s %s (%s)", id, b.Task.Name, b.Task.Version, b.Task.Config), Nav: "builds", Data: b})
}

// rawLog serves a build's log as text: the result's operations' logs
// when it has a result, the live log otherwise.
func (s *Server) rawLog(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		s.pageError(w, r, err)
		return
	}
	t, err := s.store.Task(r.Context(), id)
	if err != nil {
		s.pageError(w, r, err)
		return
	}
	var b bytes.Buffer
	res, err := s.readResult(r, id)
	if err != nil {
		s.pageError(w, r, err)
		return
	}
	if res != nil {
		for _, o := range res.Results {
			fmt.Fprintf(&b, "=== %s: %s\n%s", o.Operation, o.Status, o.Log)
			if !strings.HasSuffix(o.Log, "\n") && o.Log != "" {
				b.WriteByte('\n')
			}
		}
	} else {
		l, err := s.liveLog(r, t, 0)
		if err != nil {
			s.pageError(w, r, err)
			return
		}
		op := ""
		for _, c := range l.Chunks {
			if c.Operation != op {
				fmt.Fprintf(&b, "=== %s (live)\n", c.Operation)
				op = c.Operation
			}
			b.WriteString(c.Text)
		}
		if l.Truncated {
			fmt.Fprintf(&b, "\n[the live log reached its limit of %d bytes: the rest is in the result]\n", s.opts.LiveLogLimit)
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="build-%d.log"`, id))
	w.Write(b.Bytes())
}

// streamBuild follows a build as server-sent events: "log" for each
// chunk of its live log (its id the chunk's, so that a reconnecting
// browser resumes with Last-Event-ID), "state" when its state, status or
// cancel change, and "done" once it has ended.
func (s *Server) streamBuild(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		s.pageError(w, r, err)
		return
	}
	after, _ := strconv.ParseInt(cmp.Or(r.Header.Get("Last-Event-ID"), r.URL.Query().Get("after")), 10, 64)
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	ctx := r.Context()
	timer := time.NewTimer(0)
	defer timer.Stop()
	state := ""
	for {
		woken := s.liveWake.wait()
		t, err := s.store.Task(ctx, id)
		if err != nil {
			fmt.Fprintf(w, "event: failed\ndata: %s\n\n", jsonLine(err.Error()))
			rc.Flush()
			return
		}
		l, err := s.liveLog(r, t, after)
		if err != nil {
			return
		}
		for _, c := range l.Chunks {
			fmt.Fprintf(w, "id: %d\nevent: log\ndata: %s\n\n", c.ID, jsonLine(c))
			after = c.ID
		}
		if now := fmt.Sprint(t.State, t.Status, t.Cancel, l.Truncated); now != state {
			state = now
			fmt.Fprintf(w, "event: state\ndata: %s\n\n", jsonLine(map[string]any{
				"state": t.State, "status": taskStatus(taskJSON(t)), "reason": t.Reason, "truncated": l.Truncated}))
		}
		if t.State == store.Done {
			fmt.Fprint(w, "event: done\ndata: {}\n\n")
			rc.Flush()
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
		timer.Reset(time.Second) // for what other controllers store
		select {
		case <-woken:
		case <-timer.C:
		case <-ctx.Done():
			return
		case <-s.stopping:
			return
		}
	}
}

func jsonLine(v any) string {
	b, _ := json.Marshal(v) // values of our own types
	return string(b)
}

func (s *Server) formCancel(w http.ResponseWriter, r *http.Request) {
	id, ok := s.adminForm(w, r)
	if !ok {
		return
	}
	if _, err := s.cancel(r, id, "cancelled from the dashboard"); err != nil {
		s.pageError(w, r, err)
		return
	}
	http.Redirect(w, r, fmt.Sprintf("/builds/%d", id), http.StatusSeeOther)
}

func (s *Server) formRebuild(w http.ResponseWriter, r *http.Request) {
	id, ok := s.adminForm(w, r)
	if !ok {
		return
	}
	t, err := s.rebuild(r, id)
	if err != nil {
		s.pageError(w, r, err)
		return
	}
	http.Redirect(w, r, fmt.Sprintf("/builds/%d", t.ID), http.StatusSeeOther)
}

// adminForm checks a state-changing form: its CSRF token and origin, and
// that its sender may change things; it answers the refusal itself.
func (s *Server) adminForm(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := pathID(r)
	if err == nil {
		err = s.checkForm(w, r)
	}
	if err == nil {
		if aerr := s.webAdmin(r); aerr != nil {
			err = &badRequest{code: http.StatusForbidden, err: aerr}
		}
	}
	if err != nil {
		s.log.Warn("dashboard form refused", "path", r.URL.Path, "from", r.RemoteAddr, "err", err)
		s.pageError(w, r, err)
		return 0, false
	}
	return id, true
}

func (s *Server) pageLogin(w http.ResponseWriter, r *http.Request) {
	s.render(w, r, "login", "layout", page{Title: "Sign in", Nav: "login", Data: safeNext(r.URL.Query().Get("next"))})
}

// formLogin checks the admin token given in the form and signs the
// visitor in.
func (s *Server) formLogin(w http.ResponseWriter, r *http.Request) {
	if err := s.checkForm(w, r); err != nil {
		s.pageError(w, r, err)
		return
	}
	next := safeNext(r.PostFormValue("next"))
	if s.opts.AdminToken == "" {
		http.Redirect(w, r, next+"?flash="+url.QueryEscape("this controller has no admin token: there is nothing to sign in to"), http.StatusSeeOther)
		return
	}
	a, b := sha256.Sum256([]byte(strings.TrimSpace(r.PostFormValue("token")))), sha256.Sum256([]byte(s.opts.AdminToken))
	if subtle.ConstantTimeCompare(a[:], b[:]) != 1 {
		s.log.Warn("dashboard sign-in refused: wrong token", "from", r.RemoteAddr)
		w.WriteHeader(http.StatusUnauthorized)
		s.render(w, r, "login", "layout", page{Title: "Sign in", Nav: "login", Flash: "wrong admin token", Data: next})
		return
	}
	exp := time.Now().Add(webSessionLife)
	http.SetCookie(w, s.cookie(r, adminCookie, s.signSession(exp), exp))
	s.log.Info("dashboard sign-in", "from", r.RemoteAddr)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (s *Server) formLogout(w http.ResponseWriter, r *http.Request) {
	if err := s.checkForm(w, r); err != nil {
		s.pageError(w, r, err)
		return
	}
	c := s.cookie(r, adminCookie, "", time.Unix(0, 0))
	c.MaxAge = -1
	http.SetCookie(w, c)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// safeNext is a local path to go to after a form, "/" for anything else.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return "/"
	}
	return next
}

// cookie makes one of the dashboard's cookies: HttpOnly, SameSite=Strict,
// Secure when the visitor came over HTTPS.
func (s *Server) cookie(r *http.Request, name, value string, exp time.Time) *http.Cookie {
	return &http.Cookie{Name: name, Value: value, Path: "/", Expires: exp, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil || strings.HasPrefix(s.opts.URL, "https:")}
}

// csrfToken returns the visitor's CSRF token, setting its cookie the
// first time: a random value that every form carries, and checkForm
// compares with the cookie (which another site can neither read nor, with
// SameSite=Strict, have sent).
func (s *Server) csrfToken(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(csrfCookie); err == nil && len(c.Value) == 43 {
		return c.Value
	}
	b := make([]byte, 32)
	rand.Read(b)
	v := base64.RawURLEncoding.EncodeToString(b)
	http.SetCookie(w, s.cookie(r, csrfCookie, v, time.Now().Add(365*24*time.Hour)))
	return v
}

// checkForm reads a form (at most maxForm bytes) and checks that it came
// from one of our pages: its CSRF field matches the cookie, and its Origin
// (or Sec-Fetch-Site), when the browser sends one, is ours.
func (s *Server) checkForm(w http.ResponseWriter, r *http.Request) error {
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if err := r.ParseForm(); err != nil {
		return badf("form: %v", err)
	}
	forbidden := func(format string, args ...any) error {
		return &badRequest{code: http.StatusForbidden, err: fmt.Errorf(format, args...)}
	}
	if o := r.Header.Get("Origin"); o != "" && o != s.origin(r) {
		return forbidden("form from origin %q, not this controller's %q", o, s.origin(r))
	}
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return forbidden("form sent from a %s page", site)
	}
	c, err := r.Cookie(csrfCookie)
	got := r.PostFormValue(csrfField)
	if err != nil || got == "" || subtle.ConstantTimeCompare([]byte(c.Value), []byte(got)) != 1 {
		return forbidden("form without a valid CSRF token: reload the page and try again")
	}
	return nil
}

// origin is the origin our pages are served from.
func (s *Server) origin(r *http.Request) string {
	if s.opts.URL != "" {
		u, err := url.Parse(s.opts.URL)
		if err == nil {
			return u.Scheme + "://" + u.Host
		}
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// webAdmin says why the visitor may not cancel or rebuild, or nil: with
// an admin token, a valid sign-in cookie or the token as a bearer;
// without one, as the API allows (a loopback-only controller, from
// loopback).
func (s *Server) webAdmin(r *http.Request) error {
	if s.opts.AdminToken == "" || r.Header.Get("Authorization") != "" {
		return s.checkAdmin(r)
	}
	c, err := r.Cookie(adminCookie)
	if err != nil {
		return errors.New("not signed in: sign in with the admin token first")
	}
	if !s.validSession(c.Value, time.Now()) {
		return errors.New("the sign-in has expired or is not valid: sign in again")
	}
	return nil
}

// signSession makes a sign-in cookie's value valid until exp: a nonce,
// exp, and their HMAC keyed with the admin token, so that any controller
// with the token checks it and changing the token ends every sign-in.
func (s *Server) signSession(exp time.Time) string {
	nonce := make([]byte, 16)
	rand.Read(nonce)
	msg := hex.EncodeToString(nonce) + "." + strconv.FormatInt(exp.Unix(), 10)
	return msg + "." + s.sessionMAC(msg)
}

func (s *Server) validSession(v string, now time.Time) bool {
	i := strings.LastIndexByte(v, '.')
	if i < 0 {
		return false
	}
	msg, mac := v[:i], v[i+1:]
	if !hmac.Equal([]byte(mac), []byte(s.sessionMAC(msg))) {
		return false
	}
	_, expS, _ := strings.Cut(msg, ".")
	exp, err := strconv.ParseInt(expS, 10, 64)
	return err == nil && now.Unix() < exp
}

func (s *Server) sessionMAC(msg string) string {
	h := hmac.New(sha256.New, []byte("buildfarm dashboard sign-in\x00"+s.opts.AdminToken))
	h.Write([]byte(msg))
	return hex.EncodeToString(h.Sum(nil))
}

func (s *Server) pageSubmissions(w http.ResponseWriter, r *http.Request) {
	n, err := pageNumber(r.URL.Query().Get("page"))
	if err != nil {
		s.pageError(w, r, err)
		return
	}
	subs, more, err := s.submissionsWithTasks(r, 20, (n-1)*20)
	if err != nil {
		s.pageError(w, r, err)
		return
	}
	s.render(w, r, "submissions", "layout", page{Title: "Submissions", Nav: "submissions",
		Data: map[string]any{"Submissions": subs, "Page": n, "More": more}})
}

// submissionsWithTasks lists a page of submissions with their tasks, and
// whether there are more.
func (s *Server) submissionsWithTasks(r *http.Request, limit, offset int) ([]Submission, bool, error) {
	subs, err := s.store.Submissions(r.Context(), limit+1, offset)
	if err != nil {
		return nil, false, err
	}
	more := len(subs) > limit
	if more {
		subs = subs[:limit]
	}
	out := []Submission{}
	for _, sub := range subs {
		_, tasks, err := s.store.Submission(r.Context(), sub.ID)
		if err != nil {
			return nil, false, err
		}
		out = append(out, submissionJSON(sub, tasks))
	}
	return out, more, nil
}

func (s *Server) pageSubmission(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		s.pageError(w, r, err)
		return
	}
	sub, tasks, err := s.store.Submission(r.Context(), id)
	if err != nil {
		s.pageError(w, r, err)
		return
	}
	j := submissionJSON(sub, tasks)
	s.render(w, r, "submissions", "layout", page{Title: fmt.Sprintf("Submission %d", id), Nav: "submissions",
		Data: map[string]any{"Submissions": []Submission{j}, "Page": 1, "More": false}})
}

func (s *Server) pageAgents(w http.ResponseWriter, r *http.Request) {
	as, err := s.agents(r)
	if err != nil {
		s.pageError(w, r, err)
		return
	}
	s.render(w, r, "agents", "layout", page{Title: "Agents", Nav: "agents", Data: as})
}

// agents lists the agents with the tasks each is running.
func (s *Server) agents(r *http.Request) ([]Agent, error) {
	as, err := s.store.Agents(r.Context())
	if err != nil {
		return nil, fmt.Errorf("agents: %w", err)
	}
	out := []Agent{}
	for _, a := range as {
		j := agentJSON(a)
		running, err := s.store.Tasks(r.Context(), store.TaskFilter{Agent: a.Name, State: store.Running, Limit: 20})
		if err != nil {
			return nil, fmt.Errorf("agent %s: %w", a.Name, err)
		}
		for _, t := range running {
			j.Running = append(j.Running, taskJSON(t))
		}
		out = append(out, j)
	}
	return out, nil
}

func (s *Server) pageMachines(w http.ResponseWriter, r *http.Request) {
	ms, err := s.machines(r)
	if err != nil {
		s.pageError(w, r, err)
		return
	}
	s.render(w, r, "machines", "layout", page{Title: "Machines", Nav: "machines", Data: ms})
}

func (s *Server) pageQueue(w http.ResponseWriter, r *http.Request) {
	q, err := s.queue(r)
	if err != nil {
		s.pageError(w, r, err)
		return
	}
	s.render(w, r, "queue", "layout", page{Title: "Queue", Nav: "queue", Data: q})
}

// queue is the queue's depth, its oldest task, and the next tasks to go
// (at most 100, oldest first).
func (s *Server) queue(r *http.Request) (*Queue, error) {
	q, err := s.store.Queue(r.Context())
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	out := &Queue{Depth: q.Depth}
	if q.Oldest != nil {
		t := taskJSON(q.Oldest)
		out.Oldest = &t
	}
	tasks, err := s.store.Tasks(r.Context(), store.TaskFilter{State: store.Queued, Limit: 100})
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	for i := len(tasks) - 1; i >= 0; i-- {
		out.Tasks = append(out.Tasks, taskJSON(tasks[i]))
	}
	return out, nil
}

// Template functions.

// taskStatus is what a build's badge says: its result status when done,
// "cancelling" while a cancel reaches its agent, its state otherwise.
func taskStatus(t Task) string {
	switch {
	case t.State == string(store.Done) && t.Status != "":
		return t.Status
	case t.State == string(store.Running) && t.Cancel != "":
		return "cancelling"
	}
	return t.State
}

// statusClass is the CSS class of a status or state's colour.
func statusClass(status string) string {
	switch status {
	case "success", "warning", "error", "abort", "abnormal", "skip", "interrupt", "queued", "running", "cancelling", "done":
		return "st-" + status
	}
	return "st-other"
}

func when(t any) string {
	switch t := t.(type) {
	case time.Time:
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04:05")
	case *time.Time:
		if t == nil {
			return ""
		}
		return when(*t)
	}
	return ""
}

func ago(t time.Time) string {
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

// query is a builds-page URL with the filter f and one field changed.
func query(path string, f BuildFilter, kv ...any) string {
	v := url.Values{}
	for _, p := range []struct{ k, v string }{{"name", f.Name}, {"version", f.Version}, {"config", f.Config},
		{"machine", f.Machine}, {"agent", f.Agent}, {"status", f.Status}} {
		if p.v != "" {
			v.Set(p.k, p.v)
		}
	}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Set(fmt.Sprint(kv[i]), fmt.Sprint(kv[i+1]))
	}
	if len(v) == 0 {
		return path
	}
	return path + "?" + v.Encode()
}
