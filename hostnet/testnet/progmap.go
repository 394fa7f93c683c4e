package testnet

import (
	"testing"

	"github.com/cilium/ebpf"
)

// ProgramMap opens the map called name among the maps of the program the
// kernel knows by id kid (as a host finds a guest program's map to fill
// it), failing tb when there is none. The map is closed when tb ends.
func ProgramMap(tb testing.TB, kid uint32, name string) *ebpf.Map {
	tb.Helper()
	p, err := ebpf.NewProgramFromID(ebpf.ProgramID(kid))
	if err != nil {
		tb.Fatalf("program %d: %v", kid, err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		tb.Fatalf("program %d: %v", kid, err)
	}
	ids, _ := info.MapIDs()
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			tb.Fatalf("program %d, map %d: %v", kid, id, err)
		}
		if mi, err := m.Info(); err == nil && mi.Name == name {
			tb.Cleanup(func() { m.Close() })
			return m
		}
		m.Close()
	}
	tb.Fatalf("program %d has no map named %s", kid, name)
	return nil
}
