package notify

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/notify/notifytest"
)

// TestStormSendsOneDigest: the first event is mailed at once; a storm of
// events in the next interval goes out as one digest when the interval has
// passed; nothing else is sent.
func TestStormSendsOneDigest(t *testing.T) {
	mb, addr := notifytest.Start(t)
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
	mb.Wait(t, interval/2, "the first event goes out at once")
	first := mb.All()[0]
	if first.From != "buildfarm@build7" || len(first.To) != 1 || first.To[0] != "admin@example.org" {
		t.Errorf("first mail from %q to %q, want buildfarm@build7 to admin@example.org", first.From, first.To)
	}
	for _, want := range []string{"Subject: buildfarm build7: VM suspended: busybox (hello/1.0.0)",
		"Host:    build7", "Machine: busybox", "Task:    hello/1.0.0", "Why:     build timeout after 3h",
		"buildfarm console busybox-default-x1 help"} {
		if !strings.Contains(first.Data, want) {
			t.Errorf("first mail lacks %q:\n%s", want, first.Data)
		}
	}

	const storm = 200
	for i := range storm {
		m.Notify(Event{Kind: BootstrapFailed, Machine: fmt.Sprintf("m%d", i), Why: "no result"})
	}
	mb.NoMail(t, interval-time.Since(t0)-300*time.Millisecond, "the storm waits for the interval")
	mb.Wait(t, 3*interval, "the digest")
	digest := mb.All()[1]
	if !strings.Contains(digest.Data, fmt.Sprintf("digest of %d events", storm)) {
		t.Errorf("digest's subject does not count %d events:\n%.600s", storm, digest.Data)
	}
	for _, want := range []string{"Machine: m0\r\n", "Machine: m199\r\n", "What:    bootstrap failed"} {
		if !strings.Contains(digest.Data, want) {
			t.Errorf("digest lacks %q", want)
		}
	}
	mb.NoMail(t, interval+time.Second, "nothing more happened")
	if n := len(mb.All()); n != 2 {
		t.Errorf("%d mails, want 2", n)
	}

	// An event long after the digest goes out at once again, and one
	// pending when Run ends is sent before it returns.
	m.Notify(Event{Kind: MachineSkipped, Machine: "debian", Why: "no disk.img"})
	mb.Wait(t, interval, "an event after a quiet interval")
	m.Notify(Event{Kind: AgentCrashed, Why: "exit status 2"})
	cancel()
	<-ran
	if mails := mb.All(); len(mails) != 4 || !strings.Contains(mails[3].Data, "agent restarted after a crash") {
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
