package manifest

import "fmt"

// Pair is one name-value pair of a manifest with where it was read.
// Line and Column are 1-based positions of the name (of the colon for the
// version pair and separators); ValueLine and ValueColumn those of the
// first character of the value. Positions are zero for pairs made in code.
// A parsed name or value is most often a substring of the parsed text: a
// pair kept keeps that text in memory.
type Pair struct {
	Name  string
	Value string

	Line, Column           int32
	ValueLine, ValueColumn int32
}

// Manifest is one manifest: its pairs, the version pair (empty name, value
// "1") first.
type Manifest []Pair

// Error is a manifest error with where it is: File:Line:Column: Msg. File is
// the name given to the parser ("<stdin>" for standard input); Line and
// Column are 1-based, zero when unknown.
type Error struct {
	File         string
	Line, Column int
	Msg          string
}

func (e *Error) Error() string {
	switch {
	case e.Line == 0:
		return fmt.Sprintf("%s: error: %s", e.File, e.Msg)
	case e.Column == 0:
		return fmt.Sprintf("%s:%d: error: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s:%d:%d: error: %s", e.File, e.Line, e.Column, e.Msg)
}

// Get returns the value of the first pair named name, and whether there is
// one.
func (m Manifest) Get(name string) (string, bool) {
	for _, p := range m {
		if p.Name == name {
			return p.Value, true
		}
	}
	return "", false
}
