package initramfs

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// ErrUnknownModule means a module is neither a loadable module of the kernel
// nor built into it.
var ErrUnknownModule = errors.New("no such kernel module")

// Module is a loadable kernel module.
type Module struct {
	Name    string   // with underscores: "virtio_net"
	Path    string   // relative to the modules directory: "kernel/drivers/net/virtio_net.ko"
	Depends []string // names of the modules it needs loaded first
}

// Modules indexes the modules of one kernel: the loadable ones and those
// built into the kernel image.
type Modules struct {
	Dir     string // lib/modules/VERSION
	mods    map[string]Module
	builtin map[string]bool
}

// modName is a module's name from its file's path: the base name without
// its .ko (and compression) suffix, with dashes as underscores, as modprobe
// treats them.
func modName(p string) string {
	b := path.Base(filepath.ToSlash(p))
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

// LoadModules indexes the modules under dir (lib/modules/VERSION): from
// modules.dep when it exists, otherwise from each module's .modinfo.
func LoadModules(dir string) (*Modules, error) {
	m, err := loadModulesDep(dir)
	if errors.Is(err, fs.ErrNotExist) {
		m, err = loadModinfo(dir)
	}
	if err != nil {
		return nil, err
	}
	m.builtin = make(map[string]bool)
	b, err := os.ReadFile(filepath.Join(dir, "modules.builtin"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	for _, line := range strings.Fields(string(b)) {
		m.builtin[modName(line)] = true
	}
	return m, nil
}

func loadModulesDep(dir string) (*Modules, error) {
	name := filepath.Join(dir, "modules.dep")
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := &Modules{Dir: dir, mods: make(map[string]Module)}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		file, deps, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("%s:%d: no colon: %q", name, n, line)
		}
		mod := Module{Name: modName(file), Path: file}
		for _, d := range strings.Fields(deps) {
			mod.Depends = append(mod.Depends, modName(d))
		}
		m.mods[mod.Name] = mod
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return m, nil
}

// loadModinfo indexes the .ko files under dir by what their .modinfo
// sections say they depend on, as depmod would.
func loadModinfo(dir string) (*Modules, error) {
	m := &Modules{Dir: dir, mods: make(map[string]Module)}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(p, ".ko") {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		info, err := modinfo(p)
		if err != nil {
			return err
		}
		mod := Module{Name: modName(p), Path: filepath.ToSlash(rel)}
		if n := info["name"]; n != "" {
			mod.Name = modName(n)
		}
		for _, d := range strings.Split(info["depends"], ",") {
			if d != "" {
				mod.Depends = append(mod.Depends, modName(d))
			}
		}
		m.mods[mod.Name] = mod
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read modules' .modinfo: %w", err)
	}
	return m, nil
}

// modinfo reads the key=value pairs of a module's .modinfo section.
func modinfo(file string) (map[string]string, error) {
	f, err := elf.Open(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, fmt.Errorf("%s: no .modinfo section", file)
	}
	data, err := s.Data()
	if err != nil {
		return nil, fmt.Errorf("%s: .modinfo: %w", file, err)
	}
	info := make(map[string]string)
	for _, kv := range bytes.Split(data, []byte{0}) {
		if k, v, ok := strings.Cut(string(kv), "="); ok {
			if _, dup := info[k]; !dup {
				info[k] = v
			}
		}
	}
	return info, nil
}

// Builtin reports whether the module name is built into the kernel.
func (m *Modules) Builtin(name string) bool { return m.builtin[modName(name)] }

// Closure returns the loadable modules that loading names needs, each after
// the modules it depends on, each once. Names built into the kernel are
// satisfied already and add nothing; unknown names are an error wrapping
// ErrUnknownModule. The order is deterministic: dependencies are visited in
// name order.
func (m *Modules) Closure(names ...string) ([]Module, error) {
	var out []Module
	state := make(map[string]int) // 1 visiting, 2 done
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, name), " -> "))
		case 2:
			return nil
		}
		mod, ok := m.mods[name]
		if !ok {
			if m.builtin[name] {
				state[name] = 2
				return nil
			}
			if len(chain) > 0 {
				return fmt.Errorf("%s (needed by %s) in %s: %w", name, chain[len(chain)-1], m.Dir, ErrUnknownModule)
			}
			return fmt.Errorf("%s in %s: %w", name, m.Dir, ErrUnknownModule)
		}
		state[name] = 1
		deps := append([]string(nil), mod.Depends...)
		sort.Strings(deps)
		next := append(chain[:len(chain):len(chain)], name)
		for _, d := range deps {
			if err := visit(d, next); err != nil {
				return err
			}
		}
		state[name] = 2
		out = append(out, mod)
		return nil
	}
	for _, n := range names {
		if err := visit(modName(n), nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}
