package manifest

import (
	"errors"
	"fmt"
)

// Status is the result status of a build operation or of a whole build, as
// libbbot's result_status. The values are ordered so that combining two
// statuses keeps the greater one (see Merge):
//
//	skip < success < warning < error < abort < abnormal < interrupt
//
// skip means the agent did not build because nothing changed since the last
// build (the controller's agent, worker and dependency checksums all
// matched); abort means the build was cancelled (for example by a
// breakpoint of an interactive build); abnormal means the build ended
// abnormally (the worker crashed, the machine hung or timed out); interrupt
// means the agent was interrupted and the build should be retried.
//
// The zero value is StatusSkip, which is the identity of Merge: a status
// merged into the zero value is that status.
//
// The constants carry a Status prefix because the package's Error type
// takes the plain name.
type Status uint8

// The result statuses in libbbot's order.
const (
	StatusSkip Status = iota
	StatusSuccess
	StatusWarning
	StatusError
	StatusAbort
	StatusAbnormal
	StatusInterrupt
)

var statusNames = [...]string{
	StatusSkip:      "skip",
	StatusSuccess:   "success",
	StatusWarning:   "warning",
	StatusError:     "error",
	StatusAbort:     "abort",
	StatusAbnormal:  "abnormal",
	StatusInterrupt: "interrupt",
}

// ErrStatus is wrapped by ParseStatus's errors.
var ErrStatus = errors.New("invalid result status")

// ParseStatus returns the status named s, one of skip, success, warning,
// error, abort, abnormal and interrupt.
func ParseStatus(s string) (Status, error) {
	for i, n := range statusNames {
		if n == s {
			return Status(i), nil
		}
	}
	return 0, fmt.Errorf("%w %q", ErrStatus, s)
}

// String returns the status's name as manifests spell it.
func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("Status(%d)", uint8(s))
}

// Merge combines two statuses as libbbot's result_status operator |= does:
// the result is the greater (more severe) of the two. A build's overall
// status is its operations' statuses merged.
func (s Status) Merge(o Status) Status {
	if o > s {
		return o
	}
	return s
}

// MarshalText and UnmarshalText let a Status read and write its name in
// JSON and other text encodings.
func (s Status) MarshalText() ([]byte, error) {
	if int(s) >= len(statusNames) {
		return nil, fmt.Errorf("%w: %d", ErrStatus, uint8(s))
	}
	return []byte(s.String()), nil
}

// UnmarshalText parses a status name (see ParseStatus).
func (s *Status) UnmarshalText(b []byte) error {
	v, err := ParseStatus(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}
