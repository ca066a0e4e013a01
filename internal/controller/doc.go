// Package controller is buildfarm's controller: the service that keeps the
// queue of build tasks, gives them to agents and stores their results, after
// build2's brep. Its state lives in a store.Store (SQLite embedded, or
// PostgreSQL shared by any number of controllers), so a controller keeps
// nothing that another cannot see.
//
// # Protocol (brep's, build2 manifests over HTTP POST, text/manifest)
//
//	POST /task     (also POST /?build-task, and POST / with no query)
//	               a task request; the answer is a task response: a
//	               session, a challenge when the agent's key is
//	               registered, the result URL and the task manifest with
//	               its machine set; or an empty session when there is
//	               nothing to do. Bodies over 100 KiB get 413.
//	POST /result   (also POST /?build-result)
//	               a result request: checked and stored; 200 with an
//	               empty body. Bodies over 15 MiB get 413. An unknown
//	               session gets 404, an expired one 410, a missing or
//	               wrong signature 403; nothing is stored in those cases.
//	               The same session's result twice is stored once, and
//	               both answers are 200.
//	GET /archives/SHA256
//	               a task's sources archive, as the task's
//	               buildfarm-archive-url names it.
//	POST /live/log, /live/event, /live/poll
//	               an extension of ours, while a task runs: the header
//	               Buildfarm-Session names the session (the agent's proof);
//	               /live/log takes a chunk of an operation's output
//	               (Buildfarm-Operation, Buildfarm-Offset; at most 64 KiB),
//	               kept up to Options.LiveLogLimit a session (past it the
//	               rest is dropped, and the timeline and the page say so);
//	               /live/event a manifest with event (booted, started,
//	               finished), operation, status, detail; /live/poll
//	               nothing. Each answer carries Buildfarm-Cancel: REASON
//	               while the task is being cancelled. Unknown sessions get
//	               404, ended ones 410.
//
// A task is given for the first machine the agent offers whose name
// matches the build configuration's machine pattern (path.Match), and only
// to agents of the task's toolchain (if it names one). The session lives
// for the task's build timeout (its submission's, or the controller's)
// plus the lease margin; when it runs out, the task is queued again, and
// after the attempts limit it ends abnormal.
//
// Long polling is an extension of ours: a task request with the header
// Buildfarm-Wait: SECONDS is held until a task can be given, or up to that
// many seconds (at most the controller's long-poll limit), and then
// answered with an empty session. A bbot agent does not send the header and
// is answered at once.
//
// Each task request records its agent (GET /api/v1/agents), at most once
// every 5 seconds while the agent offers the same machines, toolchain and
// key from the same address, so that busy agents do not cost a database
// write a request.
//
// # Agent authentication
//
// As brep does it: agents' public keys (RSA or Ed25519) are registered by
// fingerprint (see package auth); an agent offering a registered
// fingerprint gets a challenge with its task and must return it signed with
// its result. AuthRequired refuses task requests (401) from agents without
// a registered key, and results without a valid signature (403). AuthOptional
// gives unauthenticated agents tasks without a challenge. AuthAuto, the
// default, is AuthRequired once at least one key is registered (a
// controller notices a first key within 2 seconds) and AuthOptional
// before, so a fresh `buildfarm up` farm works with no keys.
//
// # Submit API (JSON under /api/v1/)
//
//	PUT|POST /api/v1/archives          body: a .tar.gz; → {"sha256": ...}
//	POST     /api/v1/submissions       SubmitRequest → Submission (with tasks)
//	GET      /api/v1/submissions       → [Submission] (newest first)
//	GET      /api/v1/submissions/ID    → Submission with its tasks
//	GET      /api/v1/tasks/ID          → Task
//	GET      /api/v1/tasks/ID/result   → the result manifest (text/manifest)
//	GET      /api/v1/queue             → Queue (with the next tasks)
//	GET      /api/v1/agents            → [Agent] (with their running tasks)
//	GET      /api/v1/builds            → BuildList (filters name, version,
//	                                     config, machine, agent, status; page)
//	GET      /api/v1/builds/ID         → Build (task, timeline, operations
//	                                     with paged logs: op=NAME&page=N; live log)
//	GET      /api/v1/builds/ID/log     → LiveLog (?after=CHUNK)
//	GET      /api/v1/machines          → [MachineInfo]
//	POST     /api/v1/tasks/ID/cancel   CancelRequest (optional) → Task; 409 when done
//	POST     /api/v1/tasks/ID/rebuild  → the new Task (201); 409 unless done
//
// Requests that change something (PUT and POST) need the admin token as
// "Authorization: Bearer TOKEN" when the controller has one. Without a
// token they are allowed only when the controller listens on a loopback
// address and has no public URL (Options.URL) that would make it reachable
// through a proxy; otherwise they are refused with 403. Reading (GET) is
// open, as brep's web pages are; sessions are never shown.
//
// A cancelled queued task ends at once (abort, with the reason); a running
// one ends when its agent, told in its next live answer, reports, or when
// its lease runs out; either way it is never queued again.
//
// # Dashboard
//
// The pages (web.go) are the same documents as HTML: builds (/ and
// /builds, with the same filters), one build (/builds/ID: its fields,
// timeline, operations with their logs paged, raw log at /builds/ID/log,
// and the live log, followed by server-sent events from
// /builds/ID/events), submissions, agents, machines and the queue. The
// templates escape every field and log; the assets are embedded. Cancel
// and rebuild are forms that need the admin token: signing in at /login
// sets a cookie signed with the token (HttpOnly, SameSite=Strict, Secure
// over HTTPS, 12 hours), and each form carries a CSRF token that must
// match its cookie and come from our own origin. A controller without a
// token allows the forms as it allows the API's writes (loopback only).
//
// # Metrics
//
// GET /metrics serves Prometheus metrics: the queue's depth and oldest
// task's age, tasks by state and status, agents seen (read from the store
// at each scrape), dispatch latency and build duration by machine
// (histograms), results by status and outcome, and requests answered with
// an error, by endpoint.
//
// Errors of the API are JSON objects {"error": MESSAGE} with a 4xx or 5xx
// status; errors of the protocol are plain text.
//
// # HTTPS
//
// Options.TLSCert and TLSKey serve TLS. A controller may instead sit
// behind a TLS-terminating proxy: it then listens on loopback and
// Options.URL is the public https URL, from which result and archive URLs
// are made. An admin token never crosses plain HTTP except on loopback:
// Listen refuses a token on a non-loopback plain-HTTP listener unless
// Options.Insecure.
//
// Sources given as a git repository are fetched with the git program.
package controller
