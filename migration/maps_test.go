package migration

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
)

func u32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
func u64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

// Every carried map type goes through Read, the JSON document and Write
// into a new map of the same spec and comes out the same, real BPF maps
// both sides; a queue and a stack keep their order and are left as they
// were by Read; a bloom filter is refused by name.
func TestReadWriteEveryType(t *testing.T) {
	testnet.RequireRoot(t)
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	u64t := &btf.Int{Name: "u64", Size: 8}
	specs := []*ebpf.MapSpec{
		{Name: "h", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 8},
		{Name: "a", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 4},
		{Name: "lru", Type: ebpf.LRUHash, KeySize: 4, ValueSize: 8, MaxEntries: 8},
		{Name: "pch", Type: ebpf.PerCPUHash, KeySize: 4, ValueSize: 8, MaxEntries: 8, Value: u64t},
		{Name: "pca", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 2, Value: u64t},
		{Name: "lrupc", Type: ebpf.LRUCPUHash, KeySize: 4, ValueSize: 8, MaxEntries: 8, Value: u64t},
		{Name: "lpm", Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 8, MaxEntries: 8, Flags: 1 /* BPF_F_NO_PREALLOC */},
		{Name: "q", Type: ebpf.Queue, ValueSize: 4, MaxEntries: 4},
		{Name: "s", Type: ebpf.Stack, ValueSize: 4, MaxEntries: 4},
	}
	fill := func(s *ebpf.MapSpec, m *ebpf.Map) {
		t.Helper()
		var err error
		switch s.Type {
		case ebpf.Queue, ebpf.Stack:
			for _, v := range []uint32{1, 2, 3} {
				if err = m.Update(nil, u32(v), ebpf.UpdateAny); err != nil {
					break
				}
			}
		case ebpf.PerCPUHash, ebpf.PerCPUArray, ebpf.LRUCPUHash:
			vals := make([][]byte, cpus)
			for i := range vals {
				vals[i] = u64(uint64(100*i + 7))
			}
			err = m.Update(u32(1), vals, ebpf.UpdateAny)
		case ebpf.LPMTrie:
			err = m.Update(append(u32(24), 10, 9, 8, 0), u64(5), ebpf.UpdateAny)
		default:
			err = m.Update(u32(2), u64(42), ebpf.UpdateAny)
		}
		if err != nil {
			t.Fatalf("%s: fill: %v", s.Name, err)
		}
	}
	for _, s := range specs {
		t.Run(s.Name, func(t *testing.T) {
			src, err := ebpf.NewMap(s)
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			fill(s, src)
			c, err := Read(s.Name, src)
			if err != nil {
				t.Fatal(err)
			}
			again, err := Read(s.Name, src) // Read left it as it was
			if err != nil {
				t.Fatal(err)
			}
			doc := New()
			doc.VM = VM{Name: "vm", MAC: "02:00:00:00:00:01"}
			doc.Program = &Program{Object: []byte{1}, SHA256: "4bf5122f344554c53bde2ebb8cd2b7e3d1600ad631c385a5d7cce23c7785459a"}
			doc.Maps = []Map{c}
			b, err := doc.Encode()
			if err != nil {
				t.Fatal(err)
			}
			back, err := Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			dst, err := ebpf.NewMap(s)
			if err != nil {
				t.Fatal(err)
			}
			defer dst.Close()
			if err := Write(back.Maps[0], s, dst); err != nil {
				t.Fatal(err)
			}
			got, err := Read(s.Name, dst)
			if err != nil {
				t.Fatal(err)
			}
			a, _ := (&Document{Format: Format, Version: Version, VM: doc.VM, Program: doc.Program, Maps: []Map{c}}).Encode()
			a2, _ := (&Document{Format: Format, Version: Version, VM: doc.VM, Program: doc.Program, Maps: []Map{again}}).Encode()
			g, _ := (&Document{Format: Format, Version: Version, VM: doc.VM, Program: doc.Program, Maps: []Map{got}}).Encode()
			if !bytes.Equal(a, g) || !bytes.Equal(a, a2) {
				t.Errorf("read:    %s\nagain:   %s\nwritten: %s", a, a2, g)
			}
			if len(c.Entries) == 0 {
				t.Errorf("read nothing")
			}
			if s.Type == ebpf.Queue || s.Type == ebpf.Stack {
				want := []uint32{1, 2, 3}
				if s.Type == ebpf.Stack {
					want = []uint32{3, 2, 1}
				}
				for i, e := range got.Entries {
					if binary.LittleEndian.Uint32(e.Value) != want[i] {
						t.Errorf("element %d: %x, want %d", i, []byte(e.Value), want[i])
					}
				}
			}
		})
	}
	bloom, err := ebpf.NewMap(&ebpf.MapSpec{Name: "bf", Type: ebpf.BloomFilter, ValueSize: 4, MaxEntries: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer bloom.Close()
	if _, err := Read("bf", bloom); !errors.Is(err, ErrNotCarried) {
		t.Errorf("bloom filter: %v, want ErrNotCarried", err)
	}
}
