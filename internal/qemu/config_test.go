package qemu

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/buildfarm/buildfarm/internal/arch"
)

// foreign returns an architecture that is not the host's.
func foreign() arch.Arch {
	if arch.Host() == arch.AArch64 {
		return arch.X8664
	}
	return arch.AArch64
}

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func TestArgsGolden(t *testing.T) {
	base := func() Config {
		return Config{
			Name:      "vm1",
			Accel:     TCG,
			SerialLog: "/vm/serial.log",
			QMPSocket: "/vm/qmp.sock",
		}
	}
	tests := []struct {
		name string
		edit func(*Config)
	}{
		{"kernel-user", func(c *Config) {
			c.Kernel, c.Initrd, c.Append = "/m/kernel", "/m/initrd", "console=ttyS0 quiet"
			c.NoReboot = true
		}},
		{"kernel-disk-kvm", func(c *Config) {
			c.Accel = KVM
			c.CPUs, c.MemoryMB = 2, 2048
			c.Kernel, c.Initrd = "/m/kernel", "/m/initrd"
			c.Drives = []Drive{{Path: "/m/disk.img"}, {Path: "/m/tools.qcow2", Format: "qcow2", ReadOnly: true}}
			c.Net = Net{MAC: "00:01:02:03:04:0b"}
			c.VNC = "127.0.0.1:3"
		}},
		{"disk-only-firmware-default", func(c *Config) {
			c.Drives = []Drive{{Path: "/m/disk.img"}}
			c.Net.Mode = NetNone
			c.Extra = []string{"-device", "virtio-rng-pci"}
		}},
		{"aarch64", func(c *Config) {
			c.Arch = arch.AArch64
			c.Kernel, c.Initrd = "/m/kernel", "/m/initrd"
			c.Append = "console=ttyAMA0 quiet panic=-1"
			c.Drives = []Drive{{Path: "/m/disk.img"}}
			c.Net.MAC = "02:00:00:00:00:01"
			c.Ports = []Port{{Name: "org.buildfarm.console", Socket: "/vm/guest.sock"}}
			c.NoReboot = true
		}},
		{"paused-no-boot", func(c *Config) {
			c.Paused = true
			c.Net.Mode = NetNone
		}},
		{"incoming", func(c *Config) {
			c.Kernel, c.Initrd = "/m/kernel", "/m/initrd"
			c.Incoming = "exec:cat '/m/state'"
		}},
		{"ram-file-devices", func(c *Config) {
			c.Kernel, c.Initrd = "/m/kernel", "/m/initrd"
			c.MemoryMB = 512
			c.RAMFile = "/m/ram"
			c.Incoming, c.IncomingDevices = "exec:cat '/m/state'", true
		}},
		{"ram-file-shared-aarch64", func(c *Config) {
			c.Arch = arch.AArch64
			c.Kernel = "/m/kernel"
			c.RAMFile, c.RAMShared = "/m/ram", true
		}},
		{"console-ports", func(c *Config) {
			c.Kernel = "/m/kernel"
			c.SerialSocket = "/vm/serial.sock"
			c.Ports = []Port{{Name: "org.buildfarm.console", Socket: "/vm/guest.sock"}, {Name: "org.buildfarm.notify", Socket: "/vm/notify.sock"}}
		}},
		{"tap", func(c *Config) {
			c.Kernel = "/m/kernel"
			c.Net = Net{Mode: NetTap, Tap: "bft123-1", MAC: "02:12:34:56:78:9a"}
		}},
		{"explicit-firmware", func(c *Config) {
			c.Kernel = "/m/kernel"
			c.Firmware = "default"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.edit(&c)
			args, err := c.Args()
			if err != nil {
				t.Fatalf("Args(%+v): %v", c, err)
			}
			got := strings.Join(args, "\n") + "\n"
			golden := filepath.Join("testdata", tt.name+".args")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to write it)", err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("Args(%+v) differs from %s (-want +got):\n%s", c, golden, diff)
			}
		})
	}
}

func TestArgsErrors(t *testing.T) {
	ok := Config{Accel: TCG, Kernel: "/k", SerialLog: "/s", QMPSocket: "/q"}
	if _, err := ok.Args(); err != nil {
		t.Fatalf("Args(%+v) = %v, want no error", ok, err)
	}
	tests := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no accel", func(c *Config) { c.Accel = "" }, "accelerator"},
		{"auto accel", func(c *Config) { c.Accel = "auto" }, "accelerator"},
		{"arch", func(c *Config) { c.Arch = "riscv64" }, "architecture"},
		{"kvm for a foreign guest", func(c *Config) { c.Accel, c.Arch = KVM, foreign() }, "KVM runs only guests of the host's architecture"},
		{"nothing to boot", func(c *Config) { c.Kernel = "" }, "nothing to boot"},
		{"initrd without kernel", func(c *Config) { c.Kernel, c.Initrd = "", "/i"; c.Drives = []Drive{{Path: "/d"}} }, "without a kernel"},
		{"no qmp", func(c *Config) { c.QMPSocket = "" }, "QMP"},
		{"no serial", func(c *Config) { c.SerialLog = "" }, "serial"},
		{"comma", func(c *Config) { c.SerialLog = "/a,b" }, "comma"},
		{"drive comma", func(c *Config) { c.Drives = []Drive{{Path: "/a,b"}} }, "comma"},
		{"drive format", func(c *Config) { c.Drives = []Drive{{Path: "/d", Format: "vmdk"}} }, "format"},
		{"net mode", func(c *Config) { c.Net.Mode = "bridge" }, "network mode"},
		{"tap without a name", func(c *Config) { c.Net.Mode = NetTap }, "tap device"},
		{"port name", func(c *Config) { c.Ports = []Port{{Name: "a,b", Socket: "/p"}} }, "virtio-serial port"},
		{"port socket comma", func(c *Config) { c.Ports = []Port{{Name: "a", Socket: "/p,q"}} }, "comma"},
		{"ram file comma", func(c *Config) { c.RAMFile = "/r,am" }, "comma"},
		{"devices without a ram file", func(c *Config) { c.Incoming, c.IncomingDevices = "exec:cat /s", true }, "needs a RAM file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.edit(&c)
			_, err := c.Args()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Args(%+v) = %v, want an error about %q", c, err, tt.want)
			}
		})
	}
}
