package image

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// module is a loadable kernel module file.
type module struct {
	Name string // canonical: '-' replaced by '_'
	Path string
	Deps []string
}

func canonical(name string) string {
	name = strings.TrimSuffix(filepath.Base(name), ".ko")
	return strings.ReplaceAll(name, "-", "_")
}

// resolveModules returns want and everything it depends on, in load order
// (dependencies first), leaving out modules built into the kernel. It reads
// modules.dep when the tree has one (an installed kernel) and otherwise the
// depends= field of each module's .modinfo section (a kernel package
// unpacked with dpkg -x has no modules.dep: depmod runs at install time).
func resolveModules(moddir string, want []string) ([]module, error) {
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(moddir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			builtin[canonical(l)] = true
		}
	}
	paths := map[string]string{}
	err := filepath.WalkDir(moddir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			paths[canonical(p)] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("modules: %w", err)
	}
	depsOf, err := modulesDep(moddir)
	if err != nil {
		return nil, err
	}
	var out []module
	state := map[string]int{} // 1: visiting, 2: done
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		name = canonical(name)
		switch state[name] {
		case 1:
			return fmt.Errorf("modules: dependency cycle %s -> %s", strings.Join(chain, " -> "), name)
		case 2:
			return nil
		}
		if builtin[name] {
			state[name] = 2
			return nil
		}
		path, ok := paths[name]
		if !ok {
			return fmt.Errorf("modules: %s (needed by %s) is neither in %s nor built in", name, strings.Join(chain, " -> "), moddir)
		}
		state[name] = 1
		var deps []string
		if depsOf != nil {
			deps = depsOf[name]
		} else if deps, err = modinfoDepends(path); err != nil {
			return err
		}
		sort.Strings(deps)
		for _, d := range deps {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		out = append(out, module{Name: name, Path: path, Deps: deps})
		return nil
	}
	for _, w := range want {
		if err := visit(w, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// modulesDep reads moddir/modules.dep, nil if there is none.
func modulesDep(moddir string) (map[string][]string, error) {
	b, err := os.ReadFile(filepath.Join(moddir, "modules.dep"))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	deps := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var ds []string
		for _, d := range strings.Fields(rest) {
			ds = append(ds, canonical(strings.TrimSuffix(strings.TrimSuffix(d, ".xz"), ".zst")))
		}
		deps[canonical(strings.TrimSuffix(strings.TrimSuffix(mod, ".xz"), ".zst"))] = ds
	}
	return deps, sc.Err()
}

// modinfoDepends reads "depends=a,b" from the module's .modinfo section.
func modinfoDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s: no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("module %s: .modinfo: %w", path, err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			var deps []string
			for _, d := range strings.Split(string(v), ",") {
				if d != "" {
					deps = append(deps, canonical(d))
				}
			}
			return deps, nil
		}
	}
	return nil, nil
}
