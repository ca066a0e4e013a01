// Package notify emails the build host's admin through an SMTP relay, as
// Build OS does: no authentication, STARTTLS when the relay offers it. An
// Event says what happened (a VM suspended, a bootstrap failed, a machine
// skipped, an agent restarted after a crash), on which host, machine and
// task, why, and what to run to look.
//
// Mail is rate-limited so that a storm sends a digest, not a thousand
// messages: an event is mailed at once when no mail went out in the last
// Interval; later events wait, and go out together in one digest when the
// Interval since the last mail has passed. The mail library is
// github.com/wneessen/go-mail.
package notify

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/wneessen/go-mail"
)

// Kinds of events.
const (
	Suspended       = "VM suspended"
	BootstrapFailed = "bootstrap failed"
	MachineSkipped  = "machine skipped"
	AgentCrashed    = "agent restarted after a crash"
)

// Event is something the admin should hear about.
type Event struct {
	Kind    string // one of the kinds above, or another short phrase
	Machine string
	Task    string
	Why     string
	Look    []string // commands that show more, one a line
	Time    time.Time
}

// DefaultInterval is the least time between two mails.
const DefaultInterval = 15 * time.Minute

// Config says where mail goes.
type Config struct {
	Relay    string        // HOST:PORT of the SMTP relay
	To       string        // the admin's address
	From     string        // default buildfarm@HOST
	Host     string        // this build host's name; default os.Hostname
	Interval time.Duration // least time between two mails; default DefaultInterval
	Log      *slog.Logger
}

// maxPending bounds the events a digest lists; the rest are counted.
const maxPending = 500

// Mailer sends events as mail. Notify queues; Run sends.
type Mailer struct {
	cfg    Config
	host   string
	port   int
	log    *slog.Logger
	events chan Event
}

// New checks cfg and returns its mailer.
func New(cfg Config) (*Mailer, error) {
	host, p, err := net.SplitHostPort(cfg.Relay)
	if err != nil {
		return nil, fmt.Errorf("--smtp-relay %q: want HOST:PORT: %w", cfg.Relay, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 1 || port > 65535 {
		return nil, fmt.Errorf("--smtp-relay %q: bad port %q", cfg.Relay, p)
	}
	if err := mail.NewMsg().To(cfg.To); err != nil || cfg.To == "" {
		return nil, fmt.Errorf("--admin-email %q: not an email address", cfg.To)
	}
	if cfg.Host == "" {
		cfg.Host, _ = os.Hostname()
	}
	if cfg.From == "" {
		cfg.From = "buildfarm@" + cfg.Host
	}
	if err := mail.NewMsg().From(cfg.From); err != nil {
		return nil, fmt.Errorf("mail sender %q: %w", cfg.From, err)
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Mailer{cfg: cfg, host: host, port: port, log: log, events: make(chan Event, 1024)}, nil
}

// Notify queues ev for mailing; it never blocks. Run sends it.
func (m *Mailer) Notify(ev Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	select {
	case m.events <- ev:
	default:
		m.log.Warn("admin email: queue full, event dropped", "kind", ev.Kind, "machine", ev.Machine)
	}
}

// Run sends the queued events until ctx ends, then sends what is still
// pending (within 30 s) and returns.
func (m *Mailer) Run(ctx context.Context) error {
	// 1. Collect events.
	// 2. When no mail went out in the last Interval, mail what is pending:
	//    one event as itself, several as a digest.
	// 3. Otherwise wait until the Interval has passed.
	var (
		pending []Event
		dropped int
		last    time.Time // of the last mail (or failed attempt)
		timer   = time.NewTimer(time.Hour)
	)
	timer.Stop()
	add := func(ev Event) {
		if len(pending) < maxPending {
			pending = append(pending, ev)
		} else {
			dropped++
		}
	}
	send := func(ctx context.Context) {
		err := m.send(ctx, pending, dropped)
		last = time.Now()
		if err != nil {
			m.log.Error("admin email not sent; will try again", "relay", m.cfg.Relay, "events", len(pending)+dropped, "err", err)
			return
		}
		m.log.Info("admin email sent", "to", m.cfg.To, "events", len(pending)+dropped)
		pending, dropped = nil, 0
	}
	for {
		select {
		case ev := <-m.events:
			add(ev)
			for drained := false; !drained; { // and what else is queued
				select {
				case ev := <-m.events:
					add(ev)
				default:
					drained = true
				}
			}
		case <-timer.C:
		case <-ctx.Done():
			for drained := false; !drained; {
				select {
				case ev := <-m.events:
					add(ev)
				default:
					drained = true
				}
			}
			if len(pending) > 0 {
				fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
				send(fctx)
				cancel()
			}
			return nil
		}
		if len(pending) == 0 && dropped == 0 {
			continue
		}
		if wait := m.cfg.Interval - time.Since(last); !last.IsZero() && wait > 0 {
			timer.Reset(wait)
			continue
		}
		send(ctx)
		if len(pending) > 0 { // failed: try again after the interval
			timer.Reset(m.cfg.Interval)
		}
	}
}

// send mails one event as itself, or several as a digest.
func (m *Mailer) send(ctx context.Context, evs []Event, dropped int) error {
	msg := mail.NewMsg()
	if err := msg.From(m.cfg.From); err != nil {
		return err
	}
	if err := msg.To(m.cfg.To); err != nil {
		return err
	}
	subject, body := Compose(m.cfg.Host, evs, dropped)
	msg.Subject(subject)
	msg.SetDate()
	msg.SetMessageID()
	msg.SetBodyString(mail.TypeTextPlain, body)
	c, err := mail.NewClient(m.host, mail.WithPort(m.port), mail.WithTLSPolicy(mail.TLSOpportunistic),
		mail.WithTimeout(30*time.Second), mail.WithHELO(m.cfg.Host))
	if err != nil {
		return fmt.Errorf("smtp relay %s: %w", m.cfg.Relay, err)
	}
	if err := c.DialAndSendWithContext(ctx, msg); err != nil {
		return fmt.Errorf("smtp relay %s: %w", m.cfg.Relay, err)
	}
	return nil
}

// Compose returns the subject and body of the mail about evs (one event,
// or a digest of several) from host; dropped counts events past those
// listed.
func Compose(host string, evs []Event, dropped int) (subject, body string) {
	var b strings.Builder
	describe := func(ev Event) {
		fmt.Fprintf(&b, "What:    %s\n", ev.Kind)
		fmt.Fprintf(&b, "When:    %s\n", ev.Time.UTC().Format(time.RFC3339))
		fmt.Fprintf(&b, "Host:    %s\n", host)
		if ev.Machine != "" {
			fmt.Fprintf(&b, "Machine: %s\n", ev.Machine)
		}
		if ev.Task != "" {
			fmt.Fprintf(&b, "Task:    %s\n", ev.Task)
		}
		if ev.Why != "" {
			fmt.Fprintf(&b, "Why:     %s\n", strings.ReplaceAll(strings.TrimSpace(ev.Why), "\n", "\n         "))
		}
		if len(ev.Look) > 0 {
			fmt.Fprintf(&b, "To look, on %s:\n", host)
			for _, l := range ev.Look {
				fmt.Fprintf(&b, "    %s\n", l)
			}
		}
	}
	if len(evs) == 1 && dropped == 0 {
		ev := evs[0]
		subject = fmt.Sprintf("buildfarm %s: %s", host, ev.Kind)
		if ev.Machine != "" {
			subject += ": " + ev.Machine
		}
		if ev.Task != "" {
			subject += " (" + ev.Task + ")"
		}
		describe(ev)
		return subject, b.String()
	}
	n := len(evs) + dropped
	subject = fmt.Sprintf("buildfarm %s: digest of %d events", host, n)
	fmt.Fprintf(&b, "%d events on %s since the last mail, oldest first:\n", n, host)
	for i, ev := range evs {
		fmt.Fprintf(&b, "\n%d.\n", i+1)
		describe(ev)
	}
	if dropped > 0 {
		fmt.Fprintf(&b, "\nand %d more events, not listed; see the agent's log.\n", dropped)
	}
	return subject, b.String()
}
