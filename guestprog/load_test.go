package guestprog

import (
	"testing"

	"github.com/cilium/ebpf"
)

// LoadKeeping hands a program the state maps of an earlier load of the same
// object (a data map and .bss), never program arrays, and refuses a kept map
// that does not match the declaration, naming it: the program then gets a
// fresh one.
func TestLoadKeeping(t *testing.T) {
	first, maps := loadGuest(t, "counter")
	state := first.StateMaps()
	if len(state) != 2 || state["totals"] == nil || state[".bss"] == nil {
		t.Fatalf("state maps of counter: %v, want totals and .bss", state)
	}
	if err := state["totals"].Put(uint32(0), uint64(41)); err != nil {
		t.Fatal(err)
	}
	if err := state[".bss"].Put(uint32(0), uint64(42)); err != nil {
		t.Fatal(err)
	}
	obj, err := Parse(guest(t, "counter"), "")
	if err != nil {
		t.Fatal(err)
	}
	second, skipped, err := LoadKeeping(obj, maps, state)
	if err != nil || len(skipped) != 0 {
		t.Fatalf("LoadKeeping: %v, skipped %v", err, skipped)
	}
	defer second.Close()
	for name, want := range map[string]uint64{"totals": 41, ".bss": 42} {
		m, _ := second.Map(name)
		var v uint64
		if err := m.Lookup(uint32(0), &v); err != nil || v != want {
			t.Errorf("%s of the second load: %d, %v; want %d", name, v, err, want)
		}
	}

	wrong, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer wrong.Close()
	third, skipped, err := LoadKeeping(obj, maps, map[string]*ebpf.Map{"totals": wrong, "gone": wrong})
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	if len(skipped) != 2 || skipped["totals"] == nil || skipped["gone"] == nil {
		t.Errorf("skipped %v, want totals (value size) and gone (not declared)", skipped)
	}
	m, _ := third.Map("totals")
	var v uint64
	if err := m.Lookup(uint32(0), &v); err != nil || v != 0 {
		t.Errorf("totals after a refused keep: %d, %v; want a fresh 0", v, err)
	}

	// Program arrays are never state: a tail-calling guest keeps none.
	tc, _ := loadGuest(t, "tailcall")
	if st := tc.StateMaps(); len(st) != 0 {
		t.Errorf("state maps of tailcall: %v, want none", st)
	}
	if arr := tc.ProgArrays(); len(arr) != 1 {
		t.Errorf("program arrays of tailcall: %v", arr)
	}
}
