package worker

import (
	"bytes"
	"fmt"
)

// capBuffer keeps the head and the tail of what is written to it, up to
// limit bytes together, and marks what it dropped in between: a build log's
// start says what ran, its end says how it failed.
type capBuffer struct {
	limit   int
	head    bytes.Buffer
	tail    []byte // a ring of the last limit/2 bytes once head is full
	pos     int
	dropped int64
}

func newCapBuffer(limit int) *capBuffer { return &capBuffer{limit: limit} }

func (c *capBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if room := c.limit/2 - c.head.Len(); room > 0 {
		k := min(room, len(p))
		c.head.Write(p[:k])
		p = p[k:]
	}
	half := c.limit - c.limit/2
	for len(p) > 0 {
		if len(c.tail) < half {
			k := min(half-len(c.tail), len(p))
			c.tail = append(c.tail, p[:k]...)
			p = p[k:]
			continue
		}
		k := min(half-c.pos, len(p))
		c.dropped += int64(k)
		copy(c.tail[c.pos:], p[:k])
		c.pos = (c.pos + k) % half
		p = p[k:]
	}
	return n, nil
}

// String returns the kept log, with a line that says how much was dropped.
func (c *capBuffer) String() string {
	var b bytes.Buffer
	b.Write(c.head.Bytes())
	if c.dropped > 0 {
		if b.Len() > 0 && b.Bytes()[b.Len()-1] != '\n' {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "[... %d bytes of log truncated ...]\n", c.dropped)
	}
	b.Write(c.tail[c.pos:])
	b.Write(c.tail[:c.pos])
	return b.String()
}
