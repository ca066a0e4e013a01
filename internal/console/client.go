package console

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// Reply is a console's answer to a command.
type Reply struct {
	OK      bool
	Message string // the rest of the status line
	Body    string // the body, lines ending in \n, unstuffed
}

// Err returns the reply as an error when it is not OK.
func (r Reply) Err() error {
	if r.OK {
		return nil
	}
	return fmt.Errorf("%s", r.Message)
}

// Client is a connection to a console.
type Client struct {
	conn net.Conn
	r    *bufio.Reader
}

// Dial connects to the console socket at path.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("console %s: %w", path, err)
	}
	return &Client{conn: conn, r: bufio.NewReaderSize(conn, 64<<10)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// IsStream reports whether command streams (notify, attach) instead of
// replying.
func IsStream(command string) bool {
	name, _, _ := strings.Cut(strings.TrimSpace(command), " ")
	cmd := lookup(name)
	return cmd != nil && cmd.stream != nil
}

func (c *Client) send(ctx context.Context, line string) error {
	if strings.ContainsAny(line, "\r\n") {
		return fmt.Errorf("console command %q: one line, please", line)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.conn.SetDeadline(dl)
	} else {
		c.conn.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	_, err := io.WriteString(c.conn, line+"\n")
	return err
}

func (c *Client) status(ctx context.Context) (Reply, error) {
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	rep, err := readStatus(c.r)
	if err != nil {
		return rep, c.ctxErr(ctx, err)
	}
	return rep, nil
}

// readStatus reads a reply's status line.
func readStatus(r *bufio.Reader) (Reply, error) {
	l, err := r.ReadString('\n')
	if err != nil {
		return Reply{}, err
	}
	l = strings.TrimRight(l, "\r\n")
	switch {
	case l == "OK" || strings.HasPrefix(l, "OK "):
		return Reply{OK: true, Message: strings.TrimPrefix(strings.TrimPrefix(l, "OK"), " ")}, nil
	case l == "ERR" || strings.HasPrefix(l, "ERR "):
		return Reply{Message: strings.TrimPrefix(strings.TrimPrefix(l, "ERR"), " ")}, nil
	}
	return Reply{}, fmt.Errorf("bad status line %q (want OK or ERR)", l)
}

// readBody reads a reply's body up to its lone ".", unstuffing it.
func readBody(r *bufio.Reader) (string, error) {
	var b strings.Builder
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return b.String(), err
		}
		l = strings.TrimSuffix(l, "\n")
		if l == "." {
			return b.String(), nil
		}
		b.WriteString(strings.TrimPrefix(l, ".") + "\n")
	}
}

func (c *Client) ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("console: %w", ctx.Err())
	}
	return fmt.Errorf("console: %w", err)
}

// Do sends command (one line: a command and its argument) and returns the
// reply. An ERR reply is a Reply, not an error; errors are for the
// connection.
func (c *Client) Do(ctx context.Context, command string) (Reply, error) {
	if IsStream(command) {
		return Reply{}, fmt.Errorf("console command %q streams: use Stream", command)
	}
	if err := c.send(ctx, command); err != nil {
		return Reply{}, c.ctxErr(ctx, err)
	}
	rep, err := c.status(ctx)
	if err != nil {
		return rep, err
	}
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	rep.Body, err = readBody(c.r)
	if err != nil {
		return rep, c.ctxErr(ctx, err)
	}
	return rep, nil
}

// Stream sends a streaming command (notify, attach). When the console
// answers OK, it copies what the console sends to out, and in (if not nil)
// to the console, until either ends or ctx does; an ERR reply comes back
// as the Reply.
func (c *Client) Stream(ctx context.Context, command string, in io.Reader, out io.Writer) (Reply, error) {
	if err := c.send(ctx, command); err != nil {
		return Reply{}, c.ctxErr(ctx, err)
	}
	rep, err := c.status(ctx)
	if err != nil || !rep.OK {
		if err == nil {
			rep.Body, err = readBody(c.r) // an ERR status line has a body too
		}
		return rep, err
	}
	c.conn.SetDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { c.conn.Close() })
	defer stop()
	done := make(chan error, 2)
	go func() {
		_, err := io.Copy(out, c.r)
		done <- err
	}()
	if in != nil {
		go func() {
			_, err := io.Copy(c.conn, in)
			done <- err
		}()
	}
	err = <-done
	if ctx.Err() != nil {
		return rep, nil // the caller ended the stream
	}
	return rep, err
}
