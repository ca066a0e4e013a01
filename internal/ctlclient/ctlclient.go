// Package ctlclient is the agent's side of the controller protocol, bbot's
// two exchanges over HTTP POST with build2 manifests (text/manifest): a
// task request answered by a task response, and a result request. It also
// fetches the sources archive a task names by URL, checking its SHA-256.
//
// Every exchange goes through the *http.Client it is given and is bounded
// in time (Client.Timeout, plus the long-poll wait of a task request) and
// in size (Client.MaxAnswer, or the caller's limit for an archive), so
// that a controller that never answers, trickles its answer or sends an
// endless body costs a bounded wait and bounded memory. Errors are
// classified for the caller: *StatusError for an HTTP status other than
// 2xx (Permanent says whether retrying can help), ErrTooLarge, ErrGarbled
// and ErrChecksum.
//
// Task requests carry the header Buildfarm-Wait: SECONDS when the caller
// asks for long polling: a buildfarm controller may hold the request that
// long and answers as soon as it has a task; a bbot controller ignores it.
package ctlclient

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/buildfarm/buildfarm/internal/manifest"
)

// WaitHeader is the task request's long-polling header: the number of
// seconds the controller may hold the request waiting for a task.
const WaitHeader = "Buildfarm-Wait"

// DefaultTimeout bounds an exchange when Client.Timeout is 0.
const DefaultTimeout = 60 * time.Second

// DefaultMaxAnswer bounds a controller's answer to a request (a task
// response, or the message of a refused request).
const DefaultMaxAnswer = 16 << 20

// Errors for decisions with errors.Is.
var (
	// ErrTooLarge means an answer or an archive was larger than allowed.
	ErrTooLarge = errors.New("answer larger than allowed")
	// ErrGarbled means the answer is not the manifest stream the protocol
	// wants.
	ErrGarbled = errors.New("answer is not a valid manifest stream")
	// ErrChecksum means a downloaded archive's SHA-256 is not the one the
	// task gives.
	ErrChecksum = errors.New("SHA-256 mismatch")
)

// StatusError is an answer with an HTTP status other than 2xx.
type StatusError struct {
	URL     string
	Code    int
	Status  string // as the server sent it, "500 Internal Server Error"
	Message string // the start of the answer's body
}

func (e *StatusError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("%s: %s", e.URL, e.Status)
	}
	return fmt.Sprintf("%s: %s: %s", e.URL, e.Status, e.Message)
}

// Permanent reports whether err is an answer that retrying the same request
// cannot change: a 4xx status other than 408 (request timeout) and 429
// (too many requests), such as a controller's refusal of a result for an
// unknown or expired session.
func Permanent(err error) bool {
	var se *StatusError
	if !errors.As(err, &se) {
		return false
	}
	return se.Code >= 400 && se.Code < 500 && se.Code != http.StatusRequestTimeout && se.Code != http.StatusTooManyRequests
}

// Client talks to controllers.
type Client struct {
	// HTTP sends the requests; nil is an error, not http.DefaultClient.
	HTTP *http.Client
	// Timeout bounds one exchange, from sending the request to the end of
	// the answer; a task request's long-poll wait is added to it. 0 means
	// DefaultTimeout.
	Timeout time.Duration
	// MaxAnswer bounds an answer's body; 0 means DefaultMaxAnswer.
	MaxAnswer int64
}

// NewHTTPClient returns an HTTP client that verifies servers against the
// system's roots plus, if caFile is not "", the PEM certificates in it.
func NewHTTPClient(caFile string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("CA bundle: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA bundle %s: no PEM certificate in it", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr}, nil
}

// RequestTask POSTs req to url and returns the controller's task response;
// a response with an empty Session means there is no task. wait > 0 asks
// the controller to hold the request up to wait (whole seconds, at least
// one) until it has a task.
func (c *Client) RequestTask(ctx context.Context, url string, req *manifest.TaskRequest, wait time.Duration) (*manifest.TaskResponse, error) {
	hdr := http.Header{}
	if wait > 0 {
		hdr.Set(WaitHeader, strconv.Itoa(max(1, int(wait/time.Second))))
	}
	ms, err := c.post(ctx, url, req.Manifests(), manifest.TaskResponseLimits, hdr, wait)
	if err != nil {
		return nil, err
	}
	if len(ms) == 0 { // an empty body: no task, as an empty session
		return &manifest.TaskResponse{}, nil
	}
	resp, err := manifest.ParseTaskResponse(ms, url, manifest.Lenient)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", url, ErrGarbled, err)
	}
	return resp, nil
}

// resultResponseLimits bound the answer to a result request, which the
// client does not read: brep answers with at most a short manifest.
var resultResponseLimits = manifest.Limits{Manifests: 2, Pairs: 100}

// PostResult POSTs the result request rr to url (the task response's
// result URL). Any 2xx status is the controller's acknowledgement.
func (c *Client) PostResult(ctx context.Context, url string, rr *manifest.ResultRequest) error {
	_, err := c.post(ctx, url, rr.Manifests(), resultResponseLimits, nil, 0)
	return err
}

// FetchArchive downloads url into dst, at most maxBytes of it, and checks
// that its SHA-256 is sum (lower-case hex). On any error, what dst got is
// to be discarded. The download may take Timeout plus a second for every
// MiB that maxBytes allows.
func (c *Client) FetchArchive(ctx context.Context, url, sum string, maxBytes int64, dst io.Writer) error {
	if c.HTTP == nil {
		return errors.New("ctlclient: no HTTP client")
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout()+time.Duration(maxBytes>>20)*time.Second)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("archive %s: %w", url, err)
	}
	resp, err := c.HTTP.Do(hr)
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	defer resp.Body.Close()
	if err := c.checkStatus(url, resp); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	if resp.ContentLength > maxBytes {
		return fmt.Errorf("archive %s: %w: %d bytes, the limit is %d", url, ErrTooLarge, resp.ContentLength, maxBytes)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(dst, h), io.LimitReader(resp.Body, maxBytes+1))
	if err != nil {
		return fmt.Errorf("archive %s: %w", url, err)
	}
	if n > maxBytes {
		return fmt.Errorf("archive %s: %w: more than %d bytes", url, ErrTooLarge, maxBytes)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return fmt.Errorf("archive %s: %w: got %s, the task says %s", url, ErrChecksum, got, sum)
	}
	return nil
}

// post sends a manifest stream to url and returns the answer's stream
// (nil for an empty body), parsed within lim. The exchange may take
// Timeout plus extra.
func (c *Client) post(ctx context.Context, url string, ms []manifest.Manifest, lim manifest.Limits, hdr http.Header, extra time.Duration) ([]manifest.Manifest, error) {
	if c.HTTP == nil {
		return nil, errors.New("ctlclient: no HTTP client")
	}
	var body bytes.Buffer
	if err := manifest.Serialize(&body, ms); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout()+extra)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, url, &body)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		hr.Header[k] = v
	}
	hr.Header.Set("Content-Type", "text/manifest")
	resp, err := c.HTTP.Do(hr)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if err := c.checkStatus(url, resp); err != nil {
		return nil, err
	}
	data, err := c.readAll(url, resp.Body)
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	out, err := lim.Parse(bytes.NewReader(data), url)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrGarbled, err)
	}
	return out.Manifests(), nil
}

func (c *Client) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return DefaultTimeout
}

func (c *Client) maxAnswer() int64 {
	if c.MaxAnswer > 0 {
		return c.MaxAnswer
	}
	return DefaultMaxAnswer
}

// readAll reads an answer's body, up to MaxAnswer.
func (c *Client) readAll(url string, r io.Reader) ([]byte, error) {
	limit := c.maxAnswer()
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: reading the answer: %w", url, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: %w: more than %d bytes", url, ErrTooLarge, limit)
	}
	return data, nil
}

// checkStatus turns a status other than 2xx into a *StatusError with the
// start of the body as its message.
func (c *Client) checkStatus(url string, resp *http.Response) error {
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	return &StatusError{URL: url, Code: resp.StatusCode, Status: resp.Status,
		Message: strings.TrimSpace(strings.ToValidUTF8(string(msg), "?"))}
}
