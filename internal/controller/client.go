package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/buildfarm/buildfarm/internal/manifest"
)

// APIClient calls a controller's submit API (see the package
// documentation).
type APIClient struct {
	base  string
	token string
	http  *http.Client
}

// NewAPIClient returns a client of the controller at base (its URL),
// sending token (if not empty) as the admin token, over hc (nil:
// http.DefaultClient).
func NewAPIClient(base, token string, hc *http.Client) (*APIClient, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("controller %q: not an http or https URL", base)
	}
	if hc == nil {
		hc = http.DefaultClient
	}
	return &APIClient{base: strings.TrimSuffix(base, "/"), token: strings.TrimSpace(token), http: hc}, nil
}

// APIError is an error answer of the API.
type APIError struct {
	Method, URL string
	StatusCode  int
	Message     string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s %s: %d %s: %s", e.Method, e.URL, e.StatusCode, http.StatusText(e.StatusCode), e.Message)
}

// maxAPIAnswer bounds an API answer (a result manifest with its logs, at
// most).
const maxAPIAnswer = 64 << 20

// do sends a request and decodes the JSON answer into out (unless nil),
// or returns the raw body when out is nil.
func (c *APIClient) do(ctx context.Context, method, path, ctype string, body io.Reader, out any) ([]byte, error) {
	u := c.base + path
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAPIAnswer+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	if len(data) > maxAPIAnswer {
		return nil, fmt.Errorf("%s %s: answer larger than %d bytes", method, u, maxAPIAnswer)
	}
	if resp.StatusCode/100 != 2 {
		msg := strings.TrimSpace(string(data[:min(len(data), 2048)]))
		var e apiErrorBody
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return nil, &APIError{Method: method, URL: u, StatusCode: resp.StatusCode, Message: msg}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return nil, fmt.Errorf("%s %s: bad JSON answer: %w", method, u, err)
		}
	}
	return data, nil
}

// PutArchive uploads a sources archive (.tar.gz).
func (c *APIClient) PutArchive(ctx context.Context, data []byte) (*ArchiveInfo, error) {
	var a ArchiveInfo
	if _, err := c.do(ctx, http.MethodPut, "/api/v1/archives", "application/gzip", bytes.NewReader(data), &a); err != nil {
		return nil, err
	}
	return &a, nil
}

// Submit submits work and returns the submission with its tasks.
func (c *APIClient) Submit(ctx context.Context, req *SubmitRequest) (*Submission, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var s Submission
	if _, err := c.do(ctx, http.MethodPost, "/api/v1/submissions", "application/json", bytes.NewReader(body), &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// Submissions lists submissions, newest first (limit 0: the controller's
// default).
func (c *APIClient) Submissions(ctx context.Context, limit, offset int) ([]Submission, error) {
	var ss []Submission
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if offset > 0 {
		q.Set("offset", strconv.Itoa(offset))
	}
	path := "/api/v1/submissions"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	_, err := c.do(ctx, http.MethodGet, path, "", nil, &ss)
	return ss, err
}

// Submission returns a submission with its tasks.
func (c *APIClient) Submission(ctx context.Context, id int64) (*Submission, error) {
	var s Submission
	if _, err := c.do(ctx, http.MethodGet, fmt.Sprintf("/api/v1/submissions/%d", id), "", nil, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// Task returns a task.
func (c *APIClient) Task(ctx context.Context, id int64) (*Task, error) {
	var t Task
	if _, err := c.do(ctx, http.MethodGet, fmt.Sprintf("/api/v1/tasks/%d", id), "", nil, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// Result returns a done task's result manifest.
func (c *APIClient) Result(ctx context.Context, id int64) ([]byte, error) {
	return c.do(ctx, http.MethodGet, fmt.Sprintf("/api/v1/tasks/%d/result", id), "", nil, nil)
}

// ParsedResult returns a done task's result manifest, parsed (leniently,
// so that fields of newer agents pass).
func (c *APIClient) ParsedResult(ctx context.Context, id int64) (*manifest.Result, error) {
	text, err := c.Result(ctx, id)
	if err != nil {
		return nil, err
	}
	name := fmt.Sprintf("task %d result", id)
	ms, err := manifest.Limits{Manifests: 1}.Parse(bytes.NewReader(text), name)
	if err != nil {
		return nil, err
	}
	if ms.Len() != 1 {
		return nil, fmt.Errorf("%s: %d manifests, want 1", name, ms.Len())
	}
	return manifest.ParseResult(ms.Manifest(0), name, manifest.Lenient)
}

// Queue returns the queue's depth and oldest task.
func (c *APIClient) Queue(ctx context.Context) (*Queue, error) {
	var q Queue
	if _, err := c.do(ctx, http.MethodGet, "/api/v1/queue", "", nil, &q); err != nil {
		return nil, err
	}
	return &q, nil
}

// Agents lists the agents the controller has seen.
func (c *APIClient) Agents(ctx context.Context) ([]Agent, error) {
	var as []Agent
	_, err := c.do(ctx, http.MethodGet, "/api/v1/agents", "", nil, &as)
	return as, err
}

// Wait polls the submission every poll until each of its tasks is done,
// and returns it. When ctx ends first, it returns the submission as last
// seen (nil if never) with ctx's error.
func (c *APIClient) Wait(ctx context.Context, id int64, poll time.Duration) (*Submission, error) {
	t := time.NewTicker(poll)
	defer t.Stop()
	var last *Submission
	for {
		s, err := c.Submission(ctx, id)
		var ae *APIError
		switch {
		case errors.As(err, &ae) && ae.StatusCode < 500:
			return nil, err
		case err == nil && s.Done():
			return s, nil
		case err == nil:
			last = s
		}
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("submission %d: %w", id, ctx.Err())
		case <-t.C:
		}
	}
}

// Done reports whether every task of s is done.
func (s *Submission) Done() bool {
	for _, t := range s.Tasks {
		if t.State != "done" {
			return false
		}
	}
	return true
}

// Succeeded reports whether every task of s ended success or warning.
func (s *Submission) Succeeded() bool {
	for _, t := range s.Tasks {
		if t.State != "done" || (t.Status != "success" && t.Status != "warning") {
			return false
		}
	}
	return true
}
