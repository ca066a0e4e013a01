package console

import (
	"bufio"
	"errors"
	"strings"
	"testing"
)

// roundTrip writes a reply as the server does and reads it as the client
// does.
func roundTrip(t *testing.T, fail bool, msg, body string) Reply {
	t.Helper()
	var err error
	if fail {
		err = errors.New(msg)
	}
	var b strings.Builder
	writeReply(&b, err, msg, body)
	r := bufio.NewReader(strings.NewReader(b.String() + "OK next\n"))
	rep, rerr := readStatus(r)
	if rerr != nil {
		t.Fatalf("readStatus(%q): %v", b.String(), rerr)
	}
	if rep.Body, rerr = readBody(r); rerr != nil {
		t.Fatalf("readBody(%q): %v", b.String(), rerr)
	}
	if next, _ := readStatus(r); next.Message != "next" {
		t.Fatalf("reply %q read past its end", b.String())
	}
	return rep
}

func wantBody(body string) string {
	if body != "" && !strings.HasSuffix(body, "\n") {
		body += "\n"
	}
	return body
}

func TestReplyFraming(t *testing.T) {
	tests := []struct {
		fail      bool
		msg, body string
	}{
		{false, "", ""},
		{false, "paused", ""},
		{true, "unknown command", ""},
		{false, "", ".\n..\n.x\nplain\n"},
		{false, "", "no newline at the end"},
		{false, "", "\n\n"},
		{true, "two\nlines", "a body after ERR\n"},
	}
	for _, tt := range tests {
		rep := roundTrip(t, tt.fail, tt.msg, tt.body)
		wantMsg := strings.ReplaceAll(tt.msg, "\n", " ")
		if rep.OK == tt.fail || rep.Message != wantMsg || rep.Body != wantBody(tt.body) {
			t.Errorf("round trip of (%v, %q, %q) = %+v, want OK=%v message %q body %q", tt.fail, tt.msg, tt.body, rep, !tt.fail, wantMsg, wantBody(tt.body))
		}
	}
}

func TestReadStatusRejects(t *testing.T) {
	for _, l := range []string{"OKAY\n", "ok\n", "\n", "ERROR x\n", "OK"} {
		if _, err := readStatus(bufio.NewReader(strings.NewReader(l))); err == nil {
			t.Errorf("readStatus(%q) = nil error, want one", l)
		}
	}
}

func FuzzReplyFraming(f *testing.F) {
	f.Add(false, "ok", ".\n..x\n")
	f.Add(true, "bad\r\nthing", "")
	f.Fuzz(func(t *testing.T, fail bool, msg, body string) {
		rep := roundTrip(t, fail, msg, body)
		wantMsg := strings.NewReplacer("\n", " ", "\r", " ").Replace(msg)
		if rep.OK == fail || rep.Message != wantMsg || rep.Body != wantBody(body) {
			t.Errorf("round trip of (%v, %q, %q) = %+v", fail, msg, body, rep)
		}
	})
}
