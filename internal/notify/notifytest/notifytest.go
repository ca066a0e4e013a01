// Package notifytest runs a real SMTP server on loopback for tests
// (emersion/go-smtp), keeping what it receives: the relay that package
// notify's mail goes to in the tests of notify and of the agent.
package notifytest

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// Mail is one message received.
type Mail struct {
	From string
	To   []string
	Data string // headers and body, as sent
}

// Mailbox is an SMTP server's store of received mail.
type Mailbox struct {
	mu    sync.Mutex
	mails []Mail
	got   chan struct{}
}

// Start runs an SMTP server on 127.0.0.1 until the test ends, and returns
// its mailbox and its HOST:PORT.
func Start(t testing.TB) (*Mailbox, string) {
	t.Helper()
	mb := &Mailbox{got: make(chan struct{}, 1000)}
	srv := smtp.NewServer(mb)
	srv.Domain = "localhost"
	srv.AllowInsecureAuth = true
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return mb, ln.Addr().String()
}

// All returns the mail received so far, oldest first.
func (mb *Mailbox) All() []Mail {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	return append([]Mail(nil), mb.mails...)
}

// Wait returns when a mail arrives (one not waited for before), or fails
// the test after d.
func (mb *Mailbox) Wait(t testing.TB, d time.Duration, what string) {
	t.Helper()
	select {
	case <-mb.got:
	case <-time.After(d):
		t.Fatalf("no mail within %v: %s", d, what)
	}
}

// NoMail fails the test if a mail arrives within d.
func (mb *Mailbox) NoMail(t testing.TB, d time.Duration, why string) {
	t.Helper()
	select {
	case <-mb.got:
		t.Fatalf("a mail arrived, want none: %s; mails: %+v", why, mb.All())
	case <-time.After(d):
	}
}

// NewSession is go-smtp's Backend.
func (mb *Mailbox) NewSession(*smtp.Conn) (smtp.Session, error) { return &session{mb: mb}, nil }

type session struct {
	mb *Mailbox
	m  Mail
}

func (s *session) Reset()        { s.m = Mail{} }
func (s *session) Logout() error { return nil }
func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	s.m.From = from
	return nil
}
func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.m.To = append(s.m.To, to)
	return nil
}
func (s *session) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.m.Data = string(b)
	s.mb.mu.Lock()
	s.mb.mails = append(s.mb.mails, s.m)
	s.mb.mu.Unlock()
	s.mb.got <- struct{}{}
	return nil
}
