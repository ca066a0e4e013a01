package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/buildfarm/buildfarm/internal/qmp"
)

// TestSaveStopsFirst checks, against a QMP peer that records the
// commands, that a save stops the guest before it migrates: a live
// migration of a running aarch64 guest under TCG lost pages the guest
// wrote meanwhile (about one save in five restored corrupt).
func TestSaveStopsFirst(t *testing.T) {
	for _, tt := range []struct {
		name string
		save func(v *VM, file string) error
		cfg  Config
	}{
		{"SaveState", func(v *VM, file string) error { return v.SaveState(context.Background(), file) }, Config{Name: "vm1"}},
		{"SaveDevices", func(v *VM, file string) error { return v.SaveDevices(context.Background(), file) },
			Config{Name: "vm1", RAMFile: "/ram", RAMShared: true}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			ours, peer := net.Pipe()
			commands := make(chan []string, 1)
			go func() {
				defer peer.Close()
				var got []string
				defer func() { commands <- got }()
				peer.Write([]byte(`{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""}, "capabilities": []}}` + "\n"))
				r := bufio.NewReader(peer)
				for {
					line, err := r.ReadBytes('\n')
					if err != nil {
						return
					}
					var cmd struct {
						Execute string          `json:"execute"`
						ID      json.RawMessage `json:"id"`
					}
					if err := json.Unmarshal(line, &cmd); err != nil {
						t.Errorf("not a QMP command: %q", line)
						return
					}
					got = append(got, cmd.Execute)
					ret := `{}`
					if cmd.Execute == "query-migrate" {
						ret = `{"status": "completed"}`
					}
					reply := `{"return": ` + ret
					if cmd.ID != nil {
						reply += `, "id": ` + string(cmd.ID)
					}
					peer.Write([]byte(reply + "}\n"))
				}
			}()
			c, err := qmp.NewClient(ctx, ours)
			if err != nil {
				t.Fatal(err)
			}
			v := &VM{cfg: tt.cfg, client: c}
			if err := tt.save(v, filepath.Join(t.TempDir(), "state")); err != nil {
				t.Fatal(err)
			}
			c.Close()
			got := <-commands
			stop, migrate := slices.Index(got, "stop"), slices.Index(got, "migrate")
			if stop < 0 || migrate < 0 || stop > migrate {
				t.Errorf("QMP commands %q: want stop before migrate", got)
			}
		})
	}
}
