package controller

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/store"
)

// maxSubmitRequest bounds a submission's JSON (its template, mostly).
const maxSubmitRequest = 1 << 20

var (
	sha256RE    = regexp.MustCompile(`^[0-9a-f]{64}$`)
	toolchainRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.+-]*$`)
)

// badRequest is an API error that the client caused, with its status.
type badRequest struct {
	code int
	err  error
}

func (e *badRequest) Error() string { return e.err.Error() }
func (e *badRequest) Unwrap() error { return e.err }

func badf(format string, args ...any) error {
	return &badRequest{code: http.StatusBadRequest, err: fmt.Errorf(format, args...)}
}

// writeAPIError answers err with its status: 4xx for the client's
// mistakes, 404 for what is not found, 500 otherwise.
func (s *Server) writeAPIError(w http.ResponseWriter, r *http.Request, err error) {
	code := http.StatusInternalServerError
	var br *badRequest
	var me *manifest.Error
	switch {
	case errors.As(err, &br):
		code = br.code
	case errors.As(err, &me):
		code = http.StatusBadRequest
	case errors.Is(err, store.ErrNotFound):
		code = http.StatusNotFound
	}
	if code >= 500 {
		s.log.Error("API request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	} else {
		s.log.Debug("API request refused", "method", r.Method, "path", r.URL.Path, "status", code, "err", err)
	}
	apiError(w, code, err)
}

func (s *Server) handlePutArchive(w http.ResponseWriter, r *http.Request) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.opts.MaxArchive))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		s.writeAPIError(w, r, &badRequest{code: http.StatusRequestEntityTooLarge, err: fmt.Errorf("archive larger than %d bytes", s.opts.MaxArchive)})
		return
	}
	if err != nil {
		s.writeAPIError(w, r, badf("archive: %v", err))
		return
	}
	sum, err := s.putArchive(r, data)
	if err != nil {
		s.writeAPIError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ArchiveInfo{SHA256: sum, Size: int64(len(data))})
}

// putArchive checks that data is gzip-compressed and stores it.
func (s *Server) putArchive(r *http.Request, data []byte) (string, error) {
	if _, err := gzip.NewReader(bytes.NewReader(data)); err != nil {
		return "", badf("archive: not gzip-compressed (want a .tar.gz): %v", err)
	}
	h := sha256.Sum256(data)
	sum := hex.EncodeToString(h[:])
	if err := s.store.PutArchive(r.Context(), sum, data); err != nil {
		return "", fmt.Errorf("archive %s: %w", sum, err)
	}
	s.log.Info("archive stored", "sha256", sum, "size", len(data))
	return sum, nil
}

func (s *Server) handleGetArchive(w http.ResponseWriter, r *http.Request) {
	sum := r.PathValue("sha256")
	if !sha256RE.MatchString(sum) {
		http.Error(w, "archive: not a SHA-256 (64 lower-case hex digits)", http.StatusNotFound)
		return
	}
	data, err := s.store.Archive(r.Context(), sum)
	if errors.Is(err, store.ErrNotFound) {
		http.Error(w, "archive "+sum+": not found", http.StatusNotFound)
		return
	}
	if err != nil {
		s.log.Error("archive", "sha256", sum, "err", err)
		http.Error(w, "archive "+sum+": "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/gzip")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.Write(data)
}

func (s *Server) handleSubmit(w http.ResponseWriter, r *http.Request) {
	var req SubmitRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxSubmitRequest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.writeAPIError(w, r, &badRequest{code: http.StatusRequestEntityTooLarge, err: fmt.Errorf("submission larger than %d bytes", int64(maxSubmitRequest))})
			return
		}
		s.writeAPIError(w, r, badf("submission: bad JSON: %v", err))
		return
	}
	if dec.More() {
		s.writeAPIError(w, r, badf("submission: bad JSON: more than one object"))
		return
	}
	sub, tasks, err := s.submit(r, &req)
	if err != nil {
		s.writeAPIError(w, r, err)
		return
	}
	s.wake.notify()
	s.log.Info("submitted", "submission", sub.ID, "name", sub.Name, "version", sub.Version, "tasks", len(tasks))
	writeJSON(w, http.StatusCreated, submissionJSON(sub, tasks))
}

// submit checks a submission, gets its sources and stores it with one
// task per build configuration it selects.
func (s *Server) submit(r *http.Request, req *SubmitRequest) (*store.Submission, []*store.Task, error) {
	ctx := r.Context()
	// The template first: the name and version may come from it.
	if strings.TrimSpace(req.Template) == "" {
		return nil, nil, badf("submission: no template (a task manifest with the build steps)")
	}
	ms, err := manifest.Parse(strings.NewReader(req.Template), "template")
	if err != nil {
		return nil, nil, err
	}
	if ms.Len() != 1 {
		return nil, nil, badf("template: %d manifests, want one task manifest", ms.Len())
	}
	tmpl := ms.Manifest(0)
	if req.Name == "" {
		req.Name, _ = tmpl.Get("name")
	}
	if req.Version == "" {
		req.Version, _ = tmpl.Get("version")
	}
	if req.Name == "" || req.Version == "" {
		return nil, nil, badf("submission: no name or version (give them, or name and version fields in the template)")
	}
	timeout := s.opts.BuildTimeout
	if req.Timeout != "" {
		if timeout, err = time.ParseDuration(req.Timeout); err != nil || timeout <= 0 {
			return nil, nil, badf("timeout %q: not a positive duration (such as 90m)", req.Timeout)
		}
		if timeout > s.opts.BuildTimeout {
			return nil, nil, badf("timeout %v: longer than this controller's build timeout %v", timeout, s.opts.BuildTimeout)
		}
	}
	if req.Toolchain != "" && !toolchainRE.MatchString(req.Toolchain) {
		return nil, nil, badf("toolchain %q: not a toolchain name", req.Toolchain)
	}
	configs, err := s.opts.Buildtab.Select(req.Configs)
	if err != nil {
		return nil, nil, badf("%w", err)
	}
	sub := &store.Submission{
		Created: time.Now().UTC(), Name: req.Name, Version: req.Version,
		Configs: req.Configs, Toolchain: req.Toolchain, Priority: req.Priority, Submitter: req.Submitter,
	}
	// Check the tasks before fetching anything.
	if _, err := makeTask(tmpl, sub, configs[0], strings.Repeat("0", 64), "http://controller.invalid/"); err != nil {
		return nil, nil, err
	}
	switch {
	case req.Archive != "" && req.Git != nil:
		return nil, nil, badf("submission: both an archive and git sources")
	case req.Archive != "":
		if !sha256RE.MatchString(req.Archive) {
			return nil, nil, badf("archive %q: not a SHA-256 (64 lower-case hex digits)", req.Archive)
		}
		if _, err := s.store.Archive(ctx, req.Archive); errors.Is(err, store.ErrNotFound) {
			return nil, nil, badf("archive %s: not uploaded (PUT it to /api/v1/archives first)", req.Archive)
		} else if err != nil {
			return nil, nil, fmt.Errorf("archive %s: %w", req.Archive, err)
		}
		sub.Archive = req.Archive
	case req.Git != nil:
		data, commit, err := fetchGit(ctx, req.Git.URL, req.Git.Revision, s.opts.MaxArchive)
		if err != nil {
			return nil, nil, err
		}
		if sub.Archive, err = s.putArchive(r, data); err != nil {
			return nil, nil, err
		}
		sub.Repository, sub.Revision = req.Git.URL, commit
	default:
		return nil, nil, badf("submission: no sources (an archive's sha256, or git with url and revision)")
	}
	var tasks []*store.Task
	for _, c := range configs {
		t, err := makeTask(tmpl, sub, c, sub.Archive, s.baseURL(r))
		if err != nil {
			return nil, nil, err
		}
		var text bytes.Buffer
		if err := manifest.Serialize(&text, []manifest.Manifest{t.Manifest()}); err != nil {
			return nil, nil, badf("template: %v", err)
		}
		tasks = append(tasks, &store.Task{
			Name: sub.Name, Version: sub.Version,
			Config: c.Name, MachinePattern: c.MachinePattern, Target: c.Target,
			Toolchain: sub.Toolchain, Priority: sub.Priority,
			Manifest: text.String(), Timeout: timeout,
			State: store.Queued, Created: sub.Created,
		})
	}
	if err := s.store.Submit(ctx, sub, tasks); err != nil {
		return nil, nil, fmt.Errorf("submission %s %s: %w", sub.Name, sub.Version, err)
	}
	return sub, tasks, nil
}

// makeTask makes the task of configuration c from the template: the
// template's fields, with the submission's name and version, c's target,
// c's machine pattern as the machine (a claim sets the machine), the
// archive's SHA-256 and file name (the template's buildfarm-archive, else
// NAME-VERSION.tar.gz), and a repository-url (the git repository's, else
// the archive's URL) unless the template has one.
func makeTask(tmpl manifest.Manifest, sub *store.Submission, c Config, sum, base string) (*manifest.Task, error) {
	m := manifest.Manifest{tmpl[0]}
	for _, p := range tmpl[1:] {
		switch p.Name {
		case "name", "version", "machine", "target", "buildfarm-archive-url", "buildfarm-archive-sha256":
			continue
		}
		m = append(m, p)
	}
	m = append(m,
		manifest.Pair{Name: "name", Value: sub.Name},
		manifest.Pair{Name: "version", Value: sub.Version},
		manifest.Pair{Name: "machine", Value: c.MachinePattern},
		manifest.Pair{Name: "target", Value: c.Target})
	if _, ok := tmpl.Get("repository-url"); !ok {
		repo := strings.TrimSuffix(base, "/") + "/archives/" + sum
		if isRemoteURL(sub.Repository) {
			repo = sub.Repository
		}
		m = append(m, manifest.Pair{Name: "repository-url", Value: repo})
	}
	t, err := manifest.ParseTask(m, "template", manifest.Lenient)
	if err != nil {
		return nil, err
	}
	if len(t.Steps) == 0 {
		return nil, badf("template: no steps (buildfarm-configure, buildfarm-update, buildfarm-test or buildfarm-install)")
	}
	if t.Archive == "" {
		t.Archive = sub.Name + "-" + sub.Version + ".tar.gz"
		if strings.ContainsAny(t.Archive, `/\`) {
			return nil, badf("name %q, version %q: not a plain file name for the archive", sub.Name, sub.Version)
		}
	}
	t.ArchiveSHA256 = sum
	return t, nil
}

// isRemoteURL reports whether s is a URL with a scheme and host, as a
// task's repository-url must be.
func isRemoteURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && u.Scheme != "" && u.Host != "" && !strings.ContainsAny(s, " \t\n")
}

func (s *Server) handleSubmissions(w http.ResponseWriter, r *http.Request) {
	limit, offset, err := pageParams(r)
	if err != nil {
		s.writeAPIError(w, r, err)
		return
	}
	subs, err := s.store.Submissions(r.Context(), limit, offset)
	if err != nil {
		s.writeAPIError(w, r, fmt.Errorf("submissions: %w", err))
		return
	}
	out := []Submission{}
	for _, sub := range subs {
		out = append(out, submissionJSON(sub, nil))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleSubmission(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		s.writeAPIError(w, r, err)
		return
	}
	sub, tasks, err := s.store.Submission(r.Context(), id)
	if err != nil {
		s.writeAPIError(w, r, fmt.Errorf("submission %d: %w", id, err))
		return
	}
	writeJSON(w, http.StatusOK, submissionJSON(sub, tasks))
}

func (s *Server) handleTaskInfo(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		s.writeAPIError(w, r, err)
		return
	}
	t, err := s.store.Task(r.Context(), id)
	if err != nil {
		s.writeAPIError(w, r, fmt.Errorf("task %d: %w", id, err))
		return
	}
	writeJSON(w, http.StatusOK, taskJSON(t))
}

func (s *Server) handleTaskResult(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		s.writeAPIError(w, r, err)
		return
	}
	data, err := s.store.Result(r.Context(), id)
	if err != nil {
		s.writeAPIError(w, r, fmt.Errorf("task %d: result: %w", id, err))
		return
	}
	w.Header().Set("Content-Type", "text/manifest")
	w.Write(data)
}

func (s *Server) handleQueue(w http.ResponseWriter, r *http.Request) {
	q, err := s.queue(r)
	if err != nil {
		s.writeAPIError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, q)
}

func (s *Server) handleAgents(w http.ResponseWriter, r *http.Request) {
	as, err := s.agents(r)
	if err != nil {
		s.writeAPIError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, as)
}

func pathID(r *http.Request) (int64, error) {
	v := r.PathValue("id")
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil || id <= 0 {
		return 0, &badRequest{code: http.StatusNotFound, err: fmt.Errorf("%q: not an id (a positive number)", v)}
	}
	return id, nil
}

func pageParams(r *http.Request) (limit, offset int, err error) {
	q := r.URL.Query()
	for _, p := range []struct {
		name string
		dst  *int
	}{{"limit", &limit}, {"offset", &offset}} {
		if v := q.Get(p.name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > 10000 {
				return 0, 0, badf("%s %q: not a number from 0 to 10000", p.name, v)
			}
			*p.dst = n
		}
	}
	return limit, offset, nil
}
