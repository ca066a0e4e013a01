package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/buildfarm/buildfarm/internal/controller"
	"github.com/buildfarm/buildfarm/internal/store"
)

// tokenEnv is the environment variable that holds the admin token when no
// token file is given.
const tokenEnv = "BUILDFARM_ADMIN_TOKEN"

func init() {
	register(func(e *env) *cobra.Command {
		o := controller.DefaultOptions()
		var db, buildtab, tokenFile, auth string
		cmd := &cobra.Command{
			Use:   "controller --listen ADDR --db DSN [options]",
			Short: "Serve the build queue to agents and the submit API (brep's controller)",
			Long: `The controller keeps the queue of build tasks in a database, answers agents'
task requests, checks and stores their results, and serves the submit API
(/api/v1/) that "buildfarm submit", "status" and "wait" use.

--db is a SQLite file path (created if missing) or a postgres:// URL; any
number of controllers may share one PostgreSQL database behind any HTTP load
balancer. Once listening, it prints "controller: listening on URL" to
standard error (with --listen HOST:0, URL has the port picked).

Agents POST task requests to URL/task (or URL/?build-task, as bbot agents
of a brep controller do) and results to the result URL in each task
response. A task goes to an agent only for a machine it offers whose name
matches the build configuration's pattern, and for the task's toolchain.
An agent that sends "Buildfarm-Wait: SECONDS" is held until a task is
queued, up to --long-poll; bbot agents are answered at once.

Build configurations (--buildtab FILE) are lines

  MACHINE-PATTERN CONFIG-NAME TARGET [CLASS...]

for example "busybox* busybox x86_64-linux-gnu default", with '#'
comments. A line with no class is in class "default"; every configuration is
in class "all". A submission names configurations or classes, "default"
when it names none. Without --buildtab there is one configuration, "any",
for every machine and this host's CPU.

The same address serves the dashboard: the builds (with filters), each
build with its timeline, operations, logs and live log, the submissions,
agents, machines and queue, each page's JSON twin under /api/v1/, and
Prometheus metrics at /metrics. Cancel and rebuild (pages and API) need the
admin token; on the pages, sign in at /login with it.

A session's lease is the task's build timeout plus --lease-margin; when it
runs out the task is queued again, and after --max-attempts sessions it ends
abnormal. The build timeout is --build-timeout, or the shorter one a
submission asks for (not a longer one).

Agent authentication (--auth): "required" gives tasks only to agents whose
key is registered ("controller key add"; 401 otherwise) and accepts their
results only with the challenge signed; "optional" challenges registered
agents and gives others tasks without a challenge; "auto" (the default) is
"required" once at least one key is registered, "optional" before.

The submit API's writes need the admin token (--admin-token-file, or
$BUILDFARM_ADMIN_TOKEN) as "Authorization: Bearer TOKEN". Without a token,
only a controller listening on loopback with no --url accepts them, and only
from loopback. Reading the API is open.

HTTPS: --tls-cert and --tls-key serve TLS. Behind a TLS-terminating proxy,
listen on loopback and give the public URL with --url, for example

  buildfarm controller --listen 127.0.0.1:8080 --db /var/lib/buildfarm/db \
      --url https://ci.example.org --admin-token-file /etc/buildfarm/token

so that result and archive URLs name the proxy. An admin token on a plain
HTTP listener off loopback is refused unless --insecure.

SIGTERM or SIGINT stops it gracefully: held requests get no task, requests
in flight get 10 s to finish.`,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				var err error
				if o.Auth, err = controller.ParseAuthMode(auth); err != nil {
					return err
				}
				if buildtab != "" {
					if o.Buildtab, err = controller.ReadBuildtab(buildtab); err != nil {
						return err
					}
				}
				if o.AdminToken, err = adminToken(tokenFile); err != nil {
					return err
				}
				return runController(cmd.Context(), e, db, o)
			},
		}
		f := cmd.Flags()
		f.StringVar(&o.Listen, "listen", o.Listen, "`address` to listen on (HOST:PORT; port 0 picks one)")
		f.StringVar(&db, "db", "", "database: a SQLite file `path` or a postgres:// URL")
		cmd.MarkFlagRequired("db")
		f.StringVar(&buildtab, "buildtab", "", "build configurations `file` (default: one configuration, any, for every machine)")
		f.StringVar(&o.URL, "url", "", "public base `URL` for result and archive URLs (default: each request's own)")
		f.StringVar(&o.TLSCert, "tls-cert", "", "TLS certificate `file` (PEM); with --tls-key serves HTTPS")
		f.StringVar(&o.TLSKey, "tls-key", "", "TLS private key `file` (PEM)")
		f.StringVar(&tokenFile, "admin-token-file", "", "`file` holding the submit API's admin token (default: $"+tokenEnv+")")
		f.BoolVar(&o.Insecure, "insecure", false, "allow an admin token on a plain HTTP listener off loopback")
		f.StringVar(&auth, "auth", string(o.Auth), "agent authentication: auto, required or optional")
		f.DurationVar(&o.LongPoll, "long-poll", o.LongPoll, "longest time to hold a task request that asks to wait")
		f.DurationVar(&o.BuildTimeout, "build-timeout", o.BuildTimeout, "a task's default and longest build timeout")
		f.DurationVar(&o.LeaseMargin, "lease-margin", o.LeaseMargin, "added to a task's build timeout for a session's lease")
		f.IntVar(&o.MaxAttempts, "max-attempts", o.MaxAttempts, "sessions a task gets before it ends abnormal")
		f.Int64Var(&o.MaxArchive, "max-archive", o.MaxArchive, "largest sources archive in `bytes`")
		f.Int64Var(&o.LiveLogLimit, "live-log-limit", o.LiveLogLimit, "`bytes` of a session's live log kept (past them the page says it was truncated)")
		cmd.AddCommand(keyCmd(e))
		return cmd
	})
}

// runController opens the store and serves until ctx ends.
func runController(ctx context.Context, e *env, db string, o controller.Options) error {
	st, err := store.Open(ctx, db, e.log)
	if err != nil {
		return err
	}
	defer st.Close()
	o.Listen = strings.TrimSpace(o.Listen)
	srv, err := controller.New(st, o, e.log)
	if err != nil {
		return err
	}
	return srv.Run(ctx, func(url string) {
		fmt.Fprintf(e.stderr, "controller: listening on %s\n", url)
	})
}

// adminToken reads the admin token from file, or else from
// $BUILDFARM_ADMIN_TOKEN; "" when neither is given.
func adminToken(file string) (string, error) {
	if file == "" {
		return strings.TrimSpace(os.Getenv(tokenEnv)), nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", fmt.Errorf("admin token %s: empty file", file)
	}
	if strings.ContainsAny(tok, " \t\n") {
		return "", fmt.Errorf("admin token %s: more than one word", file)
	}
	return tok, nil
}

func keyCmd(e *env) *cobra.Command {
	var db string
	cmd := &cobra.Command{
		Use:   "key",
		Short: "Register, list and remove agents' public keys",
		Long: `Agents prove who they are with a key pair: the controller keeps their public
keys (RSA, as bbot's, or Ed25519, as buildfarm's agent makes by default),
each named by its fingerprint, the SHA-256 of its DER encoding in hex.`,
	}
	cmd.PersistentFlags().StringVar(&db, "db", "", "database: a SQLite file `path` or a postgres:// URL")
	cmd.MarkPersistentFlagRequired("db")
	withStore := func(ctx context.Context, f func(store.Store) error) error {
		st, err := store.Open(ctx, db, e.log)
		if err != nil {
			return err
		}
		err = f(st)
		if cerr := st.Close(); err == nil {
			err = cerr
		}
		return err
	}
	var name string
	add := &cobra.Command{
		Use:   "add --db DSN --name NAME PUBKEY.pem",
		Short: "Register an agent's public key and print its fingerprint",
		Long: `Register the public key in PUBKEY.pem (PEM: "PUBLIC KEY" as openssl pkey
-pubout writes, "RSA PUBLIC KEY", or a private key, of which only the public
half is kept) under NAME, saying whose it is, and print its fingerprint.
Registering the same key again replaces its name.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := os.ReadFile(args[0])
			if err != nil {
				return fmt.Errorf("key: %w", err)
			}
			k, err := controller.NewKey(data, args[0], name)
			if err != nil {
				return err
			}
			return withStore(cmd.Context(), func(st store.Store) error {
				if err := st.AddKey(cmd.Context(), k); err != nil {
					return fmt.Errorf("key %s: %w", k.Fingerprint, err)
				}
				_, err := fmt.Fprintln(e.stdout, k.Fingerprint)
				return err
			})
		},
	}
	add.Flags().StringVar(&name, "name", "", "whose key it is (an agent, a host, a person)")
	add.MarkFlagRequired("name")
	list := &cobra.Command{
		Use:   "list --db DSN",
		Short: "List the registered keys: fingerprint, name, date added",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withStore(cmd.Context(), func(st store.Store) error {
				keys, err := st.Keys(cmd.Context())
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "FINGERPRINT\tNAME\tADDED")
				for _, k := range keys {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", k.Fingerprint, k.Name, k.Added.UTC().Format("2006-01-02 15:04:05Z"))
				}
				return tw.Flush()
			})
		},
	}
	remove := &cobra.Command{
		Use:   "remove --db DSN FINGERPRINT",
		Short: "Remove a registered key",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withStore(cmd.Context(), func(st store.Store) error {
				err := st.RemoveKey(cmd.Context(), args[0])
				if errors.Is(err, store.ErrNotFound) {
					return fmt.Errorf("key %s: not registered", args[0])
				}
				return err
			})
		},
	}
	cmd.AddCommand(add, list, remove)
	return cmd
}
