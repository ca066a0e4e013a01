package manifest

import (
	"encoding/json"
	"errors"
	"testing"
)

func TestStatusNames(t *testing.T) {
	// libbbot's order, least to most severe.
	order := []struct {
		name string
		s    Status
	}{
		{"skip", StatusSkip}, {"success", StatusSuccess}, {"warning", StatusWarning},
		{"error", StatusError}, {"abort", StatusAbort}, {"abnormal", StatusAbnormal},
		{"interrupt", StatusInterrupt},
	}
	for i, o := range order {
		got, err := ParseStatus(o.name)
		if err != nil || got != o.s {
			t.Errorf("ParseStatus(%q) = %v, %v, want %v", o.name, got, err, o.s)
		}
		if s := o.s.String(); s != o.name {
			t.Errorf("%d.String() = %q, want %q", o.s, s, o.name)
		}
		if i > 0 && !(order[i-1].s < o.s) {
			t.Errorf("%v < %v is false, want true", order[i-1].s, o.s)
		}
	}
	for _, bad := range []string{"", "ok", "Success", "success ", "failed"} {
		if _, err := ParseStatus(bad); !errors.Is(err, ErrStatus) {
			t.Errorf("ParseStatus(%q) error = %v, want ErrStatus", bad, err)
		}
	}
	if s := Status(42).String(); s != "Status(42)" {
		t.Errorf("Status(42).String() = %q", s)
	}
}

func TestStatusMerge(t *testing.T) {
	tests := []struct{ a, b, want Status }{
		{StatusSuccess, StatusSuccess, StatusSuccess},
		{StatusSuccess, StatusWarning, StatusWarning},
		{StatusWarning, StatusSuccess, StatusWarning},
		{StatusWarning, StatusError, StatusError},
		{StatusError, StatusAbort, StatusAbort},
		{StatusAbort, StatusAbnormal, StatusAbnormal},
		{StatusAbnormal, StatusInterrupt, StatusInterrupt},
		{StatusInterrupt, StatusError, StatusInterrupt},
		// skip is the least: any status merged with it wins.
		{StatusSkip, StatusSuccess, StatusSuccess},
		{StatusSuccess, StatusSkip, StatusSuccess},
		{StatusSkip, StatusSkip, StatusSkip},
		{StatusError, StatusWarning, StatusError},
	}
	for _, tt := range tests {
		if got := tt.a.Merge(tt.b); got != tt.want {
			t.Errorf("%v.Merge(%v) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
	// The zero value is the identity, and Merge is commutative.
	var zero Status
	for a := StatusSkip; a <= StatusInterrupt; a++ {
		if got := zero.Merge(a); got != a {
			t.Errorf("Status(0).Merge(%v) = %v, want %v", a, got, a)
		}
		for b := StatusSkip; b <= StatusInterrupt; b++ {
			if a.Merge(b) != b.Merge(a) {
				t.Errorf("%v.Merge(%v) = %v but %v.Merge(%v) = %v", a, b, a.Merge(b), b, a, b.Merge(a))
			}
		}
	}
}

func TestStatusJSON(t *testing.T) {
	b, err := json.Marshal(map[string]Status{"s": StatusAbnormal})
	if err != nil || string(b) != `{"s":"abnormal"}` {
		t.Errorf("Marshal = %s, %v, want {\"s\":\"abnormal\"}", b, err)
	}
	var m map[string]Status
	if err := json.Unmarshal([]byte(`{"s":"warning"}`), &m); err != nil || m["s"] != StatusWarning {
		t.Errorf("Unmarshal = %v, %v, want warning", m, err)
	}
	if err := json.Unmarshal([]byte(`{"s":"ok"}`), &m); !errors.Is(err, ErrStatus) {
		t.Errorf("Unmarshal(ok) error = %v, want ErrStatus", err)
	}
	if _, err := json.Marshal(Status(9)); !errors.Is(err, ErrStatus) {
		t.Errorf("Marshal(Status(9)) error = %v, want ErrStatus", err)
	}
}
