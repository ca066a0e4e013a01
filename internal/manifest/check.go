package manifest

import (
	"errors"
	"fmt"
	"strings"
)

// Kinds are the kinds of typed manifests Check knows, as the manifest
// check command names them.
var Kinds = []string{
	"task", "result", "task-request", "task-response", "result-request",
	"machine", "bootstrapped-machine", "bootstrap", "toolchain",
}

// ErrKind is wrapped by Check's error for a kind it does not know.
var ErrKind = errors.New("unknown manifest type")

// single makes a Check function of a single-manifest kind.
func single[T any](kind string, parse func(Manifest, string, Mode) (*T, error), m func(*T) Manifest) func([]Manifest, string, Mode) ([]Manifest, error) {
	return func(ms []Manifest, file string, mode Mode) ([]Manifest, error) {
		switch len(ms) {
		case 0:
			return nil, &Error{File: file, Msg: kind + " manifest: empty stream"}
		case 1:
		default:
			p := ms[1][0]
			return nil, &Error{File: file, Line: int(p.Line), Column: int(p.Column),
				Msg: fmt.Sprintf("%s manifest: %d manifests in the stream, want 1", kind, len(ms))}
		}
		t, err := parse(ms[0], file, mode)
		if err != nil {
			return nil, err
		}
		return []Manifest{m(t)}, nil
	}
}

// stream makes a Check function of a stream kind.
func stream[T any](parse func([]Manifest, string, Mode) (*T, error), m func(*T) []Manifest) func([]Manifest, string, Mode) ([]Manifest, error) {
	return func(ms []Manifest, file string, mode Mode) ([]Manifest, error) {
		t, err := parse(ms, file, mode)
		if err != nil {
			return nil, err
		}
		return m(t), nil
	}
}

var checkers = map[string]func([]Manifest, string, Mode) ([]Manifest, error){
	"task":                 single("task", ParseTask, (*Task).Manifest),
	"result":               single("result", ParseResult, (*Result).Manifest),
	"machine":              single("machine", ParseMachine, (*Machine).Manifest),
	"bootstrapped-machine": single("bootstrapped machine", ParseBootstrappedMachine, (*BootstrappedMachine).Manifest),
	"bootstrap":            single("bootstrap", ParseBootstrap, (*Bootstrap).Manifest),
	"toolchain":            single("toolchain", ParseToolchain, (*Toolchain).Manifest),
	"task-request":         stream(ParseTaskRequest, (*TaskRequest).Manifests),
	"task-response":        stream(ParseTaskResponse, (*TaskResponse).Manifests),
	"result-request":       stream(ParseResultRequest, (*ResultRequest).Manifests),
}

// Check validates the stream ms as a typed manifest of kind (one of Kinds)
// and returns it as the typed manifest serializes it: known fields in
// build2's order, then, in lenient mode, the unknown ones. Errors are
// *Error naming the manifest type, the field and where it is, except for
// an unknown kind (ErrKind).
func Check(kind string, ms []Manifest, file string, mode Mode) ([]Manifest, error) {
	c, ok := checkers[kind]
	if !ok {
		return nil, fmt.Errorf("%w %q (valid: %s)", ErrKind, kind, strings.Join(Kinds, ", "))
	}
	return c(ms, file, mode)
}
