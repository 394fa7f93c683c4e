package guestprog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The policy's estimate of every allowed map type, over key and value sizes
// from 1 byte to pages and from one entry to millions, is never below what
// the running kernel charges for the map (its memlock figure, read from
// fdinfo) and not absurdly above it. Maps whose memory grows with their
// contents (no preallocation, LPM tries) are filled to max_entries first.
func TestMapMemoryEstimateCoversKernel(t *testing.T) {
	requireRoot(t)
	ncpu := PossibleCPUs()
	t.Logf("possible CPUs: %d", ncpu)
	noPrealloc := uint32(unix.BPF_F_NO_PREALLOC)
	for _, tc := range []struct {
		spec ebpf.MapSpec
		fill bool
		// slack: the estimate may be up to slack times the kernel's figure
		// plus 64 KiB (LPM tries: the kernel's figure leaves out the
		// intermediate nodes, up to one per entry, and the slab rounding of
		// nodes of a few dozen bytes).
		slack uint64
	}{
		{spec: ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 1, MaxEntries: 1}},
		{spec: ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 1, MaxEntries: 1 << 20}},
		{spec: ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 13, MaxEntries: 1000}},
		{spec: ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4096, MaxEntries: 1024}},
		{spec: ebpf.MapSpec{Name: ".data", Type: ebpf.Array, KeySize: 4, ValueSize: 100, MaxEntries: 1, Flags: unix.BPF_F_MMAPABLE}},
		{spec: ebpf.MapSpec{Name: ".bss", Type: ebpf.Array, KeySize: 4, ValueSize: 5000, MaxEntries: 1, Flags: unix.BPF_F_MMAPABLE}},
		{spec: ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 1, MaxEntries: 1 << 20}},
		{spec: ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 1000, MaxEntries: 1000}},
		{spec: ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 1}},
		{spec: ebpf.MapSpec{Type: ebpf.Hash, KeySize: 1, ValueSize: 1, MaxEntries: 300000}},
		{spec: ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 1}},
		{spec: ebpf.MapSpec{Type: ebpf.Hash, KeySize: 64, ValueSize: 1024, MaxEntries: 10000}},
		{spec: ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 100001}},
		{spec: ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 20000, Flags: noPrealloc}, fill: true},
		{spec: ebpf.MapSpec{Type: ebpf.Hash, KeySize: 16, ValueSize: 256, MaxEntries: 5000, Flags: noPrealloc}, fill: true},
		{spec: ebpf.MapSpec{Type: ebpf.PerCPUHash, KeySize: 1, ValueSize: 1, MaxEntries: 100000}},
		{spec: ebpf.MapSpec{Type: ebpf.PerCPUHash, KeySize: 8, ValueSize: 512, MaxEntries: 1000}},
		{spec: ebpf.MapSpec{Type: ebpf.PerCPUHash, KeySize: 4, ValueSize: 8, MaxEntries: 5000, Flags: noPrealloc}, fill: true},
		{spec: ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 1, ValueSize: 1, MaxEntries: 100000}},
		{spec: ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 16, ValueSize: 64, MaxEntries: 10000}},
		{spec: ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 4, ValueSize: 4, MaxEntries: 1001, Flags: unix.BPF_F_NO_COMMON_LRU}},
		{spec: ebpf.MapSpec{Type: ebpf.LRUCPUHash, KeySize: 4, ValueSize: 8, MaxEntries: 10000}},
		{spec: ebpf.MapSpec{Type: ebpf.LRUCPUHash, KeySize: 4, ValueSize: 1, MaxEntries: 1001, Flags: unix.BPF_F_NO_COMMON_LRU}},
		{spec: ebpf.MapSpec{Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 1, MaxEntries: 10000, Flags: noPrealloc}, fill: true, slack: 5},
		{spec: ebpf.MapSpec{Type: ebpf.LPMTrie, KeySize: 20, ValueSize: 64, MaxEntries: 2000, Flags: noPrealloc}, fill: true, slack: 5},
		{spec: ebpf.MapSpec{Type: ebpf.BloomFilter, ValueSize: 1, MaxEntries: 16 << 20, MapExtra: 15}},
		{spec: ebpf.MapSpec{Type: ebpf.BloomFilter, ValueSize: 4, MaxEntries: 1000}},
		{spec: ebpf.MapSpec{Type: ebpf.BloomFilter, ValueSize: 8, MaxEntries: 100000, MapExtra: 3}},
		{spec: ebpf.MapSpec{Type: ebpf.Queue, ValueSize: 1, MaxEntries: 1 << 20}},
		{spec: ebpf.MapSpec{Type: ebpf.Queue, ValueSize: 64, MaxEntries: 1000}},
		{spec: ebpf.MapSpec{Type: ebpf.Stack, ValueSize: 8, MaxEntries: 10000}},
		{spec: ebpf.MapSpec{Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1}},
		{spec: ebpf.MapSpec{Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 8001}},
	} {
		s := tc.spec
		name := fmt.Sprintf("%s/k%d/v%d/n%d/f%#x/x%d", s.Type, s.KeySize, s.ValueSize, s.MaxEntries, s.Flags, s.MapExtra)
		t.Run(name, func(t *testing.T) {
			if _, ok := mapTypes[s.Type]; !ok {
				t.Fatalf("%s is not an allowed map type: test only those", s.Type)
			}
			est := mapMemory(&s, ncpu)
			m, err := ebpf.NewMap(&s)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if tc.fill {
				fillMap(t, m, &s, ncpu)
			}
			kernel := memlock(t, m)
			slack := max(tc.slack, 2)
			t.Logf("estimate %d, kernel %d (%.2fx)", est, kernel, float64(est)/float64(kernel))
			if est < kernel {
				t.Errorf("estimate %d bytes is below the kernel's charge of %d bytes", est, kernel)
			}
			if est > slack*kernel+64<<10 {
				t.Errorf("estimate %d bytes is over %dx the kernel's charge of %d bytes + 64 KiB", est, slack, kernel)
			}
		})
	}
}

// fillMap puts max_entries distinct keys into a map that allocates as it
// fills.
func fillMap(t *testing.T, m *ebpf.Map, s *ebpf.MapSpec, ncpu int) {
	t.Helper()
	var value any = make([]byte, s.ValueSize)
	if s.Type == ebpf.PerCPUHash {
		if s.ValueSize != 8 {
			t.Fatal("fill per-CPU hashes of 8-byte values only")
		}
		value = make([]uint64, ncpu)
	}
	key := make([]byte, s.KeySize)
	for i := uint32(0); i < s.MaxEntries; i++ {
		clear(key)
		if s.Type == ebpf.LPMTrie {
			// Full-length prefixes, spread so that the trie branches.
			binary.LittleEndian.PutUint32(key, (s.KeySize-4)*8)
			binary.BigEndian.PutUint32(key[4:], i*2654435761)
		} else {
			binary.LittleEndian.PutUint32(key, i)
		}
		if err := m.Update(key, value, ebpf.UpdateNoExist); err != nil {
			t.Fatalf("fill entry %d: %v", i, err)
		}
	}
}

func memlock(t *testing.T, m *ebpf.Map) uint64 {
	t.Helper()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	mem, ok := info.Memlock()
	if !ok {
		t.Fatal("the kernel gives no memlock figure")
	}
	return mem
}

// The policy's estimate of an object's programs is never below the
// kernel's figures for them once loaded (memlock and JIT image), for the
// shipped guests and a many-program object: what the loader's kernel check
// sees, the static check saw first.
func TestProgramMemoryEstimateCoversKernel(t *testing.T) {
	requireRoot(t)
	objs := map[string][]byte{"many_programs": hostile(t, "many_programs")}
	for _, name := range []string{"pass", "tx", "port", "tailcall", "counter"} {
		objs[name] = guest(t, name)
	}
	for _, name := range []string{"bridge", "ddos_filter", "port_forward"} { // LPM trie, hashes, .data
		b, err := os.ReadFile("../bpf/examples/" + name + ".o")
		if err != nil {
			t.Fatal(err)
		}
		objs[name] = b
	}
	for name, b := range objs {
		t.Run(name, func(t *testing.T) {
			r, obj, err := Check(b, "", Limits{MaxPrograms: 100})
			if err != nil || obj == nil {
				t.Fatalf("%v %+v", err, r)
			}
			maps, err := NewHostMaps("q", DeliverTap, vmMAC)
			if err != nil {
				t.Fatal(err)
			}
			defer maps.Close()
			p, err := Load(obj, maps)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			charges, total, err := kernelCharges(p.coll)
			if err != nil {
				t.Fatal(err)
			}
			var progs uint64
			for _, c := range charges {
				if c.Kind == "program" {
					progs += c.Bytes
				}
			}
			t.Logf("programs: estimate %d, kernel %d; all: estimate %d, kernel %d", r.ProgramMemory, progs, r.Memory, total)
			if r.ProgramMemory < progs {
				t.Errorf("program estimate %d bytes is below the kernel's %d bytes", r.ProgramMemory, progs)
			}
			if r.Memory < total {
				t.Errorf("estimate %d bytes is below the kernel's %d bytes:\n%v", r.Memory, total, charges)
			}
		})
	}
}

// An object with more programs than the limit is refused by the static
// policy with the count and the limit; one under it but over the memory
// quota is refused with the programs' share named.
func TestProgramLimits(t *testing.T) {
	b := hostile(t, "many_programs")
	r, _, err := Check(b, "", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Accepted || !hasViolation(r, RuleProgramLimit, "81 programs; the limit is 64") {
		t.Errorf("report: %+v", r)
	}
	r, obj, err := Check(b, "", Limits{MaxPrograms: 100})
	if err != nil || !r.Accepted || obj == nil {
		t.Fatalf("with 100 programs allowed: %v %+v", err, r)
	}
	if per := r.ProgramMemory / 81; per < 8<<10 {
		t.Errorf("%d bytes per program estimated; each costs the kernel at least two pages", per)
	}
	r, _, err = Check(b, "", Limits{MaxPrograms: 100, Memory: r.Memory - 1})
	if err != nil {
		t.Fatal(err)
	}
	if r.Accepted || !hasViolation(r, RuleMemoryQuota, "programs (") || !hasViolation(r, RuleMemoryQuota, "81 of them") {
		t.Errorf("report: %+v", r)
	}
}

func hasViolation(r *Report, rule Rule, says string) bool {
	for _, v := range r.Violations {
		if v.Rule == rule && strings.Contains(v.String(), says) {
			return true
		}
	}
	return false
}

// The loader holds the kernel's own figures to the quota: an object that
// the kernel charges more for than the quota is unloaded, the error names
// each map and program with its charge, and none of them stays in the
// kernel.
func TestLoadRefusesOverKernelQuota(t *testing.T) {
	requireRoot(t)
	obj, err := Parse(guest(t, "counter"), "")
	if err != nil {
		t.Fatal(err)
	}
	maps, err := NewHostMaps("q", DeliverTap, vmMAC)
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()

	// Under the default quota it loads; its kernel figures are the base.
	p, err := Load(obj, maps)
	if err != nil {
		t.Fatal(err)
	}
	_, total, err := kernelCharges(p.coll)
	p.Close()
	if err != nil {
		t.Fatal(err)
	}

	// The static estimate is above the kernel's figure, so only an
	// object checked against other limits than it is loaded with reaches
	// the kernel check: give it a quota one byte short.
	obj.Limits.Memory = total - 1
	p, err = Load(obj, maps)
	if err == nil {
		p.Close()
		t.Fatalf("loaded with a quota of %d bytes below the kernel's %d", total-1, total)
	}
	var qe *QuotaError
	if !errors.As(err, &qe) || !errors.Is(err, ErrOverQuota) {
		t.Fatalf("error %v, want a *QuotaError", err)
	}
	t.Log(err)
	for _, want := range []string{"map totals (id ", "map .bss (id ", "program counter (id ", fmt.Sprintf("the quota is %d bytes", total-1)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	// Nothing of the refused load stays: every map and program it named
	// goes away (the kernel frees them after an RCU grace period; .bss is
	// memory-mapped by cilium/ebpf until the mapping is garbage collected).
	deadline := time.Now().Add(10 * time.Second)
	for _, c := range qe.Charges {
		for {
			var err error
			var closer interface{ Close() error }
			if c.Kind == "map" {
				closer, err = ebpf.NewMapFromID(ebpf.MapID(c.ID))
			} else {
				closer, err = ebpf.NewProgramFromID(ebpf.ProgramID(c.ID))
			}
			if errors.Is(err, os.ErrNotExist) {
				break
			}
			if err == nil {
				closer.Close()
			}
			runtime.GC()
			if time.Now().After(deadline) {
				t.Fatalf("%s still in the kernel after the refused load (%v)", c, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// Limits.PossibleCPUs defaults to the kernel's possible CPUs, not the CPUs
// this process may run on: taskset does not shrink the estimate.
func TestLimitsPossibleCPUs(t *testing.T) {
	b, err := os.ReadFile("/sys/devices/system/cpu/possible")
	if err != nil {
		t.Fatalf("read the possible CPUs: %v", err)
	}
	var lo, hi int
	if n, _ := fmt.Sscanf(strings.TrimSpace(string(b)), "%d-%d", &lo, &hi); n == 1 {
		hi = lo
	}
	if got := DefaultLimits().PossibleCPUs; got != hi+1 {
		t.Errorf("PossibleCPUs %d, /sys says %q", got, b)
	}
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err == nil && set.Count() < hi+1 {
		t.Logf("affinity %d CPUs, possible %d", set.Count(), hi+1)
	}
	// A 1-byte per-CPU array is charged 8 bytes per CPU per entry.
	spec := &ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 1, MaxEntries: 1 << 20}
	if est, min := mapMemory(spec, hi+1), uint64(1<<20)*8*uint64(hi+1); est < min {
		t.Errorf("estimate %d below %d", est, min)
	}
}
