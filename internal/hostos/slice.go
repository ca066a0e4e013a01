package hostos

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
)

// Host is what the machine has: its CPUs and RAM.
type Host struct {
	CPUs   int   `json:"cpus"`
	RAMKiB int64 `json:"ram_kib"`
}

// ThisHost returns this machine's CPUs (those this process may run on) and
// RAM (MemTotal of /proc/meminfo).
func ThisHost() (Host, error) {
	h := Host{CPUs: runtime.NumCPU()}
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return h, fmt.Errorf("host RAM: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "MemTotal:" {
			h.RAMKiB, err = strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return h, fmt.Errorf("host RAM: /proc/meminfo MemTotal %q: %w", f[1], err)
			}
			return h, nil
		}
	}
	return h, fmt.Errorf("host RAM: no MemTotal in /proc/meminfo")
}

// Slice is one agent instance's share of the host: the CPUs and RAM of its
// VM.
type Slice struct {
	CPUs   int   `json:"cpus"`
	RAMKiB int64 `json:"ram_kib"`
}

// RAMMiB is the slice's RAM in MiB, as the agent's --ram takes it.
func (s Slice) RAMMiB() int { return int(s.RAMKiB / 1024) }

// Derived is a configuration applied to a host: what `buildfarm hostos
// config` prints.
type Derived struct {
	*Config
	Host       Host                `json:"host"`
	Toolchains []*DerivedToolchain `json:"toolchains"`
}

// DerivedToolchain is a toolchain with the slice of each of its agent
// instances (cpus and ram_kib are one instance's).
type DerivedToolchain struct {
	*Toolchain
	Slice
}

// Derive divides host among c's agent instances: the host's CPUs less
// cpu_reserved, times cpu_overcommit, and its RAM less ram_reserved GiB,
// times ram_overcommit, are shared equally among all instances of all
// toolchains (rounded down; at least one CPU). So 8 CPUs with
// cpu_overcommit=3/2 and three toolchains of one instance give each 4 CPUs.
// RAM that the reserve leaves nothing of is an error.
func Derive(c *Config, host Host) (*Derived, error) {
	d := &Derived{Config: c, Host: host, Toolchains: []*DerivedToolchain{}}
	n := 0
	for _, t := range c.Toolchains {
		n += t.Instances
	}
	if n == 0 {
		return d, nil
	}
	cpus := int64(host.CPUs - c.CPUReserved)
	if cpus <= 0 {
		return nil, fmt.Errorf("%scpu_reserved=%d leaves none of the host's %d CPUs for agents", Prefix, c.CPUReserved, host.CPUs)
	}
	ram := host.RAMKiB - int64(c.RAMReserved)<<20
	if ram <= 0 {
		return nil, fmt.Errorf("%sram_reserved=%d (GiB) leaves none of the host's %d KiB of RAM for agents", Prefix, c.RAMReserved, host.RAMKiB)
	}
	s := Slice{
		CPUs:   int(cpus * int64(c.CPUOvercommit.Num) / int64(c.CPUOvercommit.Den) / int64(n)),
		RAMKiB: ram * int64(c.RAMOvercommit.Num) / int64(c.RAMOvercommit.Den) / int64(n),
	}
	s.CPUs = max(s.CPUs, 1)
	if s.RAMKiB < 64<<10 {
		return nil, fmt.Errorf("RAM: %d KiB less %sram_reserved=%d GiB, shared among %d agent instances, gives each %d KiB, less than 64 MiB", host.RAMKiB, Prefix, c.RAMReserved, n, s.RAMKiB)
	}
	for _, t := range c.Toolchains {
		d.Toolchains = append(d.Toolchains, &DerivedToolchain{Toolchain: t, Slice: s})
	}
	return d, nil
}
