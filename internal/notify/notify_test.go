package notify

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// mailbox is an SMTP server on loopback (emersion/go-smtp) that keeps
// what it receives.
type mailbox struct {
	mu    sync.Mutex
	mails []received
	got   chan struct{}
}

type received struct {
	from string
	to   []string
	data string
}

func (mb *mailbox) NewSession(*smtp.Conn) (smtp.Session, error) { return &session{mb: mb}, nil }

type session struct {
	mb *mailbox
	r  received
}

func (s *session) Reset()        { s.r = received{} }
func (s *session) Logout() error { return nil }
func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	s.r.from = from
	return nil
}
func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.r.to = append(s.r.to, to)
	return nil
}
func (s *session) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.r.data = string(b)
	s.mb.mu.Lock()
	s.mb.mails = append(s.mb.mails, s.r)
	s.mb.mu.Unlock()
	s.mb.got <- struct{}{}
	return nil
}

func (mb *mailbox) all() []received {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	return append([]received(nil), mb.mails...)
}

func startSMTP(t *testing.T) (*mailbox, string) {
	t.Helper()
	mb := &mailbox{got: make(chan struct{}, 100)}
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

// wait returns when a mail arrives, or fails after d.
func (mb *mailbox) wait(t *testing.T, d time.Duration, what string) {
	t.Helper()
	select {
	case <-mb.got:
	case <-time.After(d):
		t.Fatalf("no mail within %v: %s", d, what)
	}
}

// noMail fails if a mail arrives within d.
func (mb *mailbox) noMail(t *testing.T, d time.Duration, why string) {
	t.Helper()
	select {
	case <-mb.got:
		t.Fatalf("a mail arrived, want none: %s; mails: %+v", why, mb.all())
	case <-time.After(d):
	}
}

// TestStormSendsOneDigest: the first event is mailed at once; a storm of
// events in the next interval goes out as one digest when the interval has
// passed; nothing else is sent.
func TestStormSendsOneDigest(t *testing.T) {
	mb, addr := startSMTP(t)
	const interval = 3 * time.Second
	m, err := New(Config{Relay: addr, To: "admin@example.org", Host: "build7", Interval: interval})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); m.Run(ctx) }()
	defer func() { cancel(); <-ran }()

	t0 := time.Now()
	m.Notify(Event{Kind: Suspended, Machine: "busybox", Task: "hello/1.0.0", Why: "build timeout after 3h",
		Look: []string{"buildfarm console busybox-default-x1 help"}})
	mb.wait(t, interval/2, "the first event goes out at once")
	first := mb.all()[0]
	if first.from != "buildfarm@build7" || len(first.to) != 1 || first.to[0] != "admin@example.org" {
		t.Errorf("first mail from %q to %q, want buildfarm@build7 to admin@example.org", first.from, first.to)
	}
	for _, want := range []string{"Subject: buildfarm build7: VM suspended: busybox (hello/1.0.0)",
		"Host:    build7", "Machine: busybox", "Task:    hello/1.0.0", "Why:     build timeout after 3h",
		"buildfarm console busybox-default-x1 help"} {
		if !strings.Contains(first.data, want) {
			t.Errorf("first mail lacks %q:\n%s", want, first.data)
		}
	}

	const storm = 200
	for i := range storm {
		m.Notify(Event{Kind: BootstrapFailed, Machine: fmt.Sprintf("m%d", i), Why: "no result"})
	}
	mb.noMail(t, interval-time.Since(t0)-300*time.Millisecond, "the storm waits for the interval")
	mb.wait(t, 3*interval, "the digest")
	digest := mb.all()[1]
	if !strings.Contains(digest.data, fmt.Sprintf("digest of %d events", storm)) {
		t.Errorf("digest's subject does not count %d events:\n%.600s", storm, digest.data)
	}
	for _, want := range []string{"Machine: m0\r\n", "Machine: m199\r\n", "What:    bootstrap failed"} {
		if !strings.Contains(digest.data, want) {
			t.Errorf("digest lacks %q", want)
		}
	}
	mb.noMail(t, interval+time.Second, "nothing more happened")
	if n := len(mb.all()); n != 2 {
		t.Errorf("%d mails, want 2", n)
	}

	// An event long after the digest goes out at once again, and one
	// pending when Run ends is sent before it returns.
	m.Notify(Event{Kind: MachineSkipped, Machine: "debian", Why: "no disk.img"})
	mb.wait(t, interval, "an event after a quiet interval")
	m.Notify(Event{Kind: AgentCrashed, Why: "exit status 2"})
	cancel()
	<-ran
	if mails := mb.all(); len(mails) != 4 || !strings.Contains(mails[3].data, "agent restarted after a crash") {
		t.Errorf("after Run ended: %d mails, want 4, the last about the crash", len(mails))
	}
}

func TestNewChecks(t *testing.T) {
	for _, c := range []Config{
		{Relay: "localhost", To: "a@b.c"},
		{Relay: "localhost:x", To: "a@b.c"},
		{Relay: "localhost:25", To: ""},
		{Relay: "localhost:25", To: "not an address"},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v) = nil error, want one", c)
		}
	}
}

func TestComposeSingle(t *testing.T) {
	at := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	subj, body := Compose("h1", []Event{{Kind: Suspended, Machine: "m", Task: "t/1", Why: "line1\nline2", Look: []string{"cmd a"}, Time: at}}, 0)
	if subj != "buildfarm h1: VM suspended: m (t/1)" {
		t.Errorf("subject = %q", subj)
	}
	want := "What:    VM suspended\nWhen:    2026-05-06T07:08:09Z\nHost:    h1\nMachine: m\nTask:    t/1\nWhy:     line1\n         line2\nTo look, on h1:\n    cmd a\n"
	if body != want {
		t.Errorf("body =\n%s\nwant\n%s", body, want)
	}
}
