// Package vmrecord keeps the on-disk record of this host's VMs: one JSON
// file a VM in a registry directory (DefaultDir, under /run, since a VM does
// not outlive the host's boot), written atomically (a temporary file renamed
// over the old one), so that a reader never sees half a record. The agent
// writes a VM's record when it starts it and when it suspends it, and
// removes it when the VM is gone; `buildfarm vm list` and `buildfarm
// console` read them, and an agent that restarts finds the VMs it suspended
// earlier in them. It needs no external tool.
package vmrecord

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// DefaultDir is the host's registry of VMs.
const DefaultDir = "/run/buildfarm/vms"

// State is what a VM is doing.
type State string

// The states of a VM with a record.
const (
	Running   State = "running"
	Suspended State = "suspended" // paused and kept for investigation
)

// Record is one VM: what it runs, why it is in its state, and where its
// files are.
type Record struct {
	Name      string    `json:"name"`
	Machine   string    `json:"machine"`
	Toolchain string    `json:"toolchain,omitempty"`
	Instance  int       `json:"instance,omitempty"`
	Task      string    `json:"task,omitempty"` // package/version, or bootstrap
	State     State     `json:"state"`
	Since     time.Time `json:"since"`              // when it entered State
	Why       string    `json:"why,omitempty"`      // for a suspended VM: the deadline missed or the error
	Expires   time.Time `json:"expires,omitzero"`   // when a suspended VM is destroyed
	PID       int       `json:"pid"`                // QEMU's
	AgentPID  int       `json:"agent_pid,omitzero"` // the agent that started it
	Dir       string    `json:"dir"`                // its working directory
	TFTP      string    `json:"tftp,omitempty"`     // its TFTP directory (get/, put/, and Dir), deleted with it
	Snapshot  string    `json:"snapshot,omitempty"` // its disk snapshot, to delete with it
	NetNS     string    `json:"netns,omitempty"`
	Tap       string    `json:"tap,omitempty"` // its tap device on a bridge, deleted with it
	QMP       string    `json:"qmp"`
	SerialLog string    `json:"serial_log"`
	Serial    string    `json:"serial_socket,omitempty"` // the serial console's socket
	Console   string    `json:"console,omitempty"`       // the management console's socket
}

// Check reports what makes r unusable as a record.
func (r *Record) Check() error {
	if err := checkName(r.Name); err != nil {
		return err
	}
	if r.State != Running && r.State != Suspended {
		return fmt.Errorf("vm %s: state %q, want running or suspended", r.Name, r.State)
	}
	return nil
}

func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") || strings.HasPrefix(name, ".") {
		return fmt.Errorf("vm name %q: want a plain name (no '/', not starting with '.')", name)
	}
	return nil
}

// Alive reports whether r's QEMU still runs: its process exists and is a
// QEMU (a pid may be reused).
func (r *Record) Alive() bool {
	if r.PID <= 0 || syscall.Kill(r.PID, 0) == syscall.ESRCH {
		return false
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", r.PID))
	return err == nil && strings.HasPrefix(string(comm), "qemu")
}

// Commands are what to run to look at r, for a person.
func (r *Record) Commands() []string {
	c := []string{"buildfarm console " + r.Name + " help"}
	if r.State == Suspended {
		c = append(c, "buildfarm console "+r.Name+" go")
	}
	if r.Serial != "" {
		c = append(c, "buildfarm console "+r.Name+" attach")
	}
	if r.SerialLog != "" {
		c = append(c, "less "+r.SerialLog)
	}
	return c
}

// Registry is a directory of records.
type Registry struct{ Dir string }

func (g Registry) path(name string) string { return filepath.Join(g.Dir, name+".json") }

// Write writes r, replacing its earlier record, atomically.
func (g Registry) Write(r Record) error {
	if err := r.Check(); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "\t")
	if err != nil {
		return fmt.Errorf("vm %s: record: %w", r.Name, err)
	}
	if err := os.MkdirAll(g.Dir, 0o755); err != nil {
		return fmt.Errorf("vm registry: %w", err)
	}
	f, err := os.CreateTemp(g.Dir, ".tmp-"+r.Name+"-*")
	if err != nil {
		return fmt.Errorf("vm %s: record: %w", r.Name, err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), g.path(r.Name))
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("vm %s: record: %w", r.Name, err)
	}
	return nil
}

// ErrNotFound means there is no record of that name.
var ErrNotFound = errors.New("no such VM")

// Read returns the record of the VM name.
func (g Registry) Read(name string) (Record, error) {
	if err := checkName(name); err != nil {
		return Record{}, err
	}
	b, err := os.ReadFile(g.path(name))
	if errors.Is(err, os.ErrNotExist) {
		return Record{}, fmt.Errorf("vm %s: %w (in %s)", name, ErrNotFound, g.Dir)
	}
	if err != nil {
		return Record{}, fmt.Errorf("vm %s: %w", name, err)
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return Record{}, fmt.Errorf("vm record %s: %w", g.path(name), err)
	}
	return r, nil
}

// List returns every record, oldest first (by Since, then name). A
// missing directory holds no records.
func (g Registry) List() ([]Record, error) {
	ents, err := os.ReadDir(g.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("vm registry: %w", err)
	}
	var out []Record
	var errs []error
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(name, ".") {
			continue
		}
		r, err := g.Read(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Record) int {
		if c := a.Since.Compare(b.Since); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out, errors.Join(errs...)
}

// Remove deletes the record of name; a missing record is no error.
func (g Registry) Remove(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := os.Remove(g.path(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("vm %s: %w", name, err)
	}
	return nil
}
