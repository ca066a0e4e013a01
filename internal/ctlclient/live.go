package ctlclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/buildfarm/buildfarm/internal/manifest"
)

// The live exchanges, an extension of buildfarm's controller: while a task
// runs, the agent sends its operations' output and progress, and learns
// whether the task is being cancelled. A bbot controller has none of them.
const (
	SessionHeader   = "Buildfarm-Session"
	OperationHeader = "Buildfarm-Operation"
	OffsetHeader    = "Buildfarm-Offset"
	CancelHeader    = "Buildfarm-Cancel"
	LogFullHeader   = "Buildfarm-Log-Full"
)

// LiveAnswer is what the controller answers a live request with.
type LiveAnswer struct {
	// Cancel is why the task is being cancelled ("" when it is not).
	Cancel string
	// LogFull says that the session's live log is full: more is dropped.
	LogFull bool
}

// LiveURL is the live endpoints' base URL of the controller whose result
// URL is resultURL, or "" when that is not a buildfarm controller's
// (ending in /result).
func LiveURL(resultURL string) string {
	base, ok := strings.CutSuffix(resultURL, "/result")
	if !ok {
		return ""
	}
	return base + "/live"
}

// LiveLog sends a chunk of an operation's output at offset.
func (c *Client) LiveLog(ctx context.Context, liveURL, session, op string, offset int64, data []byte) (LiveAnswer, error) {
	return c.live(ctx, liveURL+"/log", session, http.Header{OperationHeader: {op}, OffsetHeader: {strconv.FormatInt(offset, 10)}}, data)
}

// LiveEvent reports an event: kind booted, started or finished, with the
// operation, status and detail it has.
func (c *Client) LiveEvent(ctx context.Context, liveURL, session, kind, op, status, detail string) (LiveAnswer, error) {
	m := manifest.Manifest{{Name: "", Value: "1"}, {Name: "event", Value: kind}}
	for _, p := range []manifest.Pair{{Name: "operation", Value: op}, {Name: "status", Value: status}, {Name: "detail", Value: detail}} {
		if p.Value != "" {
			m = append(m, p)
		}
	}
	var b bytes.Buffer
	if err := manifest.Serialize(&b, []manifest.Manifest{m}); err != nil {
		return LiveAnswer{}, err
	}
	return c.live(ctx, liveURL+"/event", session, http.Header{"Content-Type": {"text/manifest"}}, b.Bytes())
}

// LivePoll asks whether the task is being cancelled.
func (c *Client) LivePoll(ctx context.Context, liveURL, session string) (LiveAnswer, error) {
	return c.live(ctx, liveURL+"/poll", session, nil, nil)
}

func (c *Client) live(ctx context.Context, url, session string, hdr http.Header, body []byte) (LiveAnswer, error) {
	if c.HTTP == nil {
		return LiveAnswer{}, errors.New("ctlclient: no HTTP client")
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return LiveAnswer{}, err
	}
	for k, v := range hdr {
		hr.Header[k] = v
	}
	hr.Header.Set(SessionHeader, session)
	resp, err := c.HTTP.Do(hr)
	if err != nil {
		return LiveAnswer{}, err
	}
	defer resp.Body.Close()
	if err := c.checkStatus(url, resp); err != nil {
		return LiveAnswer{}, err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	a := LiveAnswer{Cancel: resp.Header.Get(CancelHeader), LogFull: resp.Header.Get(LogFullHeader) != ""}
	if len(a.Cancel) > 1024 {
		a.Cancel = a.Cancel[:1024]
	}
	return a, nil
}

// String is the answer as a log shows it.
func (a LiveAnswer) String() string { return fmt.Sprintf("cancel=%q log-full=%v", a.Cancel, a.LogFull) }
