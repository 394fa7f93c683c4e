package guestprog

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"

	hostbpf "github.com/xdp-hostd/xdp-hostd/bpf"
)

// Memory quota of a guest object: its maps and its programs.
//
// The static estimate models what the kernel allocates for each allowed map
// type (kernel/bpf/hashtab.c, arraymap.c, lpm_trie.c, bloom_filter.c,
// queue_stack_maps.c), sized for the host's possible CPUs (per-CPU values
// exist for every CPU that could come online, whatever the daemon's CPU
// affinity), at the map's fullest, plus the slab rounding of the allocations
// and a margin. It is never below the kernel's own figure (the memlock line
// of the map's fdinfo); quota_test.go checks that on the running kernel for
// every allowed map type. After loading, the loader reads the kernel's
// figures for every map and program of the object and refuses the object if
// they add up to more than the quota.

// possibleCPUs is the number of CPUs the kernel sizes per-CPU data for
// (/sys/devices/system/cpu/possible), not the CPUs this process may run on.
var possibleCPUs = sync.OnceValue(func() int {
	if n, err := ebpf.PossibleCPU(); err == nil && n > 0 {
		return n
	}
	return runtime.NumCPU()
})

// PossibleCPUs is the host's count of possible CPUs, the multiplier of
// every per-CPU map value.
func PossibleCPUs() int { return possibleCPUs() }

const pageSize = 4096

// Fixed overheads, rounded up from the kernel's structures (x86-64, 6.x).
const (
	mapHeader      = 4096 // struct bpf_map and the type's own struct (bpf_htab, bpf_array, ...)
	htabElemHeader = 48   // struct htab_elem before the key
	htabBucket     = 16   // struct bucket
	htabLockBytes  = 8 * 4
	lpmNodeHeader  = 40 // struct lpm_trie_node before data
	llistNode      = 8  // bpf_mem_alloc's per-object header
	memAllocCache  = 96 // bpf_mem_alloc's per-CPU free list high watermark, in objects
	lruPerCPU      = 256
	progAuxBytes   = 4096 // struct bpf_prog_aux, func and line info, kallsyms
	progStatsBytes = 64   // per CPU: run-time statistics and recursion counter
	progHeader     = 256  // struct bpf_prog before its instructions
	jitBytesPerIns = 16   // x86-64 JIT code per (rewritten) instruction, generous
	jitHeader      = 256
)

// satAdd, satMul: overflow saturates at the maximum, which no quota allows.
func satAdd(a, b uint64) uint64 {
	s, c := bits.Add64(a, b, 0)
	if c != 0 {
		return math.MaxUint64
	}
	return s
}

func satMul(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	if hi != 0 {
		return math.MaxUint64
	}
	return lo
}

func roundUp(n, to uint64) uint64 {
	if n%to == 0 {
		return n
	}
	return satAdd(n-n%to, to)
}

func roundPow2(n uint64) uint64 {
	if n <= 1 {
		return 1
	}
	if n > 1<<63 {
		return math.MaxUint64
	}
	return 1 << bits.Len64(n-1)
}

// kmallocSize is what kmalloc really takes for n bytes: its size classes,
// then whole pages in powers of two.
func kmallocSize(n uint64) uint64 {
	for _, c := range []uint64{8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192} {
		if n <= c {
			return c
		}
	}
	return roundPow2(n)
}

// areaSize is what bpf_map_area_alloc takes for n bytes: kmalloc up to
// 32 KiB, vmalloc pages above.
func areaSize(n uint64) uint64 {
	if n <= 8*pageSize {
		return kmallocSize(n)
	}
	return roundUp(n, pageSize)
}

const (
	bpfFNoPrealloc  = unix.BPF_F_NO_PREALLOC
	bpfFNoCommonLRU = unix.BPF_F_NO_COMMON_LRU
	bpfFMmapable    = unix.BPF_F_MMAPABLE
)

// mapMemory estimates the most kernel memory a map can cost on a host with
// ncpu possible CPUs. It is at least the kernel's own figure for the map
// (fdinfo memlock), full, and includes a margin.
func mapMemory(m *ebpf.MapSpec, ncpu int) uint64 {
	n := mapModel(m, uint64(max(ncpu, 1)))
	return satAdd(satAdd(n, n/16), mapHeader)
}

func mapModel(m *ebpf.MapSpec, ncpu uint64) uint64 {
	key, value, entries := uint64(m.KeySize), uint64(m.ValueSize), uint64(m.MaxEntries)
	key8, value8 := roundUp(key, 8), roundUp(value, 8)
	switch m.Type {
	case ebpf.Array, ebpf.ProgramArray:
		if m.Type == ebpf.ProgramArray {
			value8 = 8 // a pointer to the program
		}
		data := satMul(entries, value8)
		if m.Flags&bpfFMmapable != 0 || strings.HasPrefix(m.Name, ".") {
			// .data, .bss and .rodata are mmapable where the kernel allows:
			// whole pages.
			return roundUp(data, pageSize)
		}
		return areaSize(satAdd(data, 512))
	case ebpf.PerCPUArray:
		ptrs := areaSize(satAdd(satMul(entries, 8), 512))
		return satAdd(ptrs, satMul(satMul(entries, value8), ncpu))
	case ebpf.Hash, ebpf.PerCPUHash, ebpf.LRUHash, ebpf.LRUCPUHash:
		return htabModel(m, ncpu, key8, value8, entries)
	case ebpf.LPMTrie:
		// Every node, leaf or intermediate (at most one per leaf), comes
		// from bpf_mem_alloc at the leaf size; the kernel's figure counts
		// the leaves only.
		data := key - min(key, 4)
		node := kmallocSize(lpmNodeHeader + data + value + llistNode)
		return satMul(satAdd(satMul(entries, 2), memAllocCache*ncpu), node)
	case ebpf.BloomFilter:
		return areaSize(satAdd(bloomBits(m)/8, 512))
	case ebpf.Queue, ebpf.Stack:
		return areaSize(satAdd(satMul(entries+1, value), 512))
	}
	// Not an allowed type: the policy refuses it anyway. Count it as a
	// plain array so that the report still shows a size.
	return satMul(entries, key8+value8)
}

func htabModel(m *ebpf.MapSpec, ncpu, key8, value8, entries uint64) uint64 {
	percpu := m.Type == ebpf.PerCPUHash || m.Type == ebpf.LRUCPUHash
	lru := m.Type == ebpf.LRUHash || m.Type == ebpf.LRUCPUHash
	if lru && m.Flags&bpfFNoCommonLRU != 0 {
		entries = roundUp(entries, ncpu) // every CPU's list gets as many
	}
	elem := htabElemHeader + key8
	if percpu {
		elem += 8 // pointer to the per-CPU value
	} else {
		elem = satAdd(elem, value8)
	}
	total := areaSize(satMul(roundPow2(entries), htabBucket))
	total = satAdd(total, htabLockBytes*ncpu)
	perCPUValues := func(n uint64) uint64 { return satMul(satMul(n, value8), ncpu) }
	if lru || m.Flags&bpfFNoPrealloc == 0 {
		n := entries
		if !percpu && !lru {
			n += ncpu // one spare element per CPU for updates in place
		}
		total = satAdd(total, roundUp(satMul(n, elem), pageSize))
		if percpu {
			total = satAdd(total, perCPUValues(n))
		}
		if lru {
			total = satAdd(total, lruPerCPU*ncpu)
		} else {
			total = satAdd(total, 64*ncpu) // per-CPU free lists
		}
		return total
	}
	// Without preallocation elements come from bpf_mem_alloc as the map
	// fills, plus what its per-CPU caches hold.
	n := satAdd(entries, memAllocCache*ncpu)
	total = satAdd(total, satMul(n, kmallocSize(elem+llistNode)))
	if percpu {
		total = satAdd(total, perCPUValues(n))
	}
	return total
}

// bloomBits is the bit array size of a bloom filter, as bloom_map_alloc
// computes it: entries × hash functions × 7/5, rounded to a power of two.
func bloomBits(m *ebpf.MapSpec) uint64 {
	k := m.MapExtra & 0xf
	if k == 0 {
		k = 5
	}
	nbits := uint64(m.MaxEntries) * k
	if nbits > math.MaxUint32 || (nbits/5)*7 > 1<<31 {
		return 1 << 32
	}
	nbits = (nbits / 5) * 7
	if nbits <= 64 {
		return 64
	}
	return roundPow2(nbits)
}

// frameInstructions is the size of the largest host frame, which the
// loader adds to the entry program.
var frameInstructions = sync.OnceValue(func() int {
	n := 512
	if host, err := hostbpf.LoadVmprog(); err == nil {
		for _, p := range host.Programs {
			n = max(n, insnSlots(p))
		}
	}
	return n
})

func insnSlots(p *ebpf.ProgramSpec) int {
	var n int
	for _, ins := range p.Instructions {
		n += int(ins.Size() / 8)
	}
	return n
}

// programMemory estimates what a loaded program costs the kernel: its
// instructions after the verifier's rewrites (page-rounded, as the kernel
// allocates and charges them), its JIT image (page-rounded), its aux data
// and per-CPU statistics.
func programMemory(p *ebpf.ProgramSpec, ncpu int) uint64 {
	n := uint64(insnSlots(p))*3 + 64
	prog := roundUp(progHeader+8*n, pageSize)
	jit := roundUp(jitHeader+jitBytesPerIns*n, pageSize)
	return prog + jit + progAuxBytes + progStatsBytes*uint64(max(ncpu, 1))
}

// frameMemory is what the host frame adds to the entry program.
func frameMemory() uint64 {
	n := uint64(frameInstructions()) * 3
	return roundUp(8*n, pageSize) + roundUp(jitBytesPerIns*n, pageSize)
}

// checkQuota bounds the number of programs and counts the programs'
// memory with the maps' (checkMaps) against the VM's memory quota.
func checkQuota(spec *ebpf.CollectionSpec, lim Limits, r *Report) {
	if n := len(spec.Programs); n > lim.MaxPrograms {
		r.add(Violation{Rule: RuleProgramLimit, Message: fmt.Sprintf("%d programs; the limit is %d per object", n, lim.MaxPrograms)})
	}
	total := frameMemory()
	for _, p := range spec.Programs {
		total = satAdd(total, programMemory(p, lim.PossibleCPUs))
	}
	r.ProgramMemory = total
	r.Memory = satAdd(r.MapMemory, total)
	if r.Memory > lim.Memory {
		r.add(Violation{Rule: RuleMemoryQuota, Message: fmt.Sprintf(
			"maps (%s) and programs (%s, %d of them) need up to %s of kernel memory on this host (%d possible CPUs); the VM's quota is %s",
			kib(r.MapMemory), kib(total), len(spec.Programs), kib(r.Memory), lim.PossibleCPUs, kib(lim.Memory))})
	}
}

func kib(n uint64) string {
	if n >= 10<<20 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d KiB", (n+1023)>>10)
}

// checkKconfig refuses __kconfig externs: the loader would fill them from
// the host's kernel version and configuration. They live in the object's
// BTF as the variables of the virtual .kconfig section.
func checkKconfig(spec *ebpf.CollectionSpec, r *Report) {
	if spec.Types == nil {
		return
	}
	var ds *btf.Datasec
	if err := spec.Types.TypeByName(".kconfig", &ds); err != nil {
		return
	}
	var externs []string
	for _, v := range ds.Vars {
		if v.Type != nil {
			externs = append(externs, v.Type.TypeName())
		}
	}
	sort.Strings(externs)
	for _, e := range externs {
		r.add(Violation{Rule: RuleHostState, Map: ".kconfig", Message: fmt.Sprintf("extern %s is __kconfig: the loader would fill it from the host's kernel version and configuration; remove it", e)})
	}
}

// Charge is what the kernel says one map or program of a loaded object
// costs.
type Charge struct {
	Kind  string `json:"kind"` // "map" or "program"
	Name  string `json:"name"`
	ID    uint32 `json:"id"` // the kernel's ID
	Bytes uint64 `json:"bytes"`
}

func (c Charge) String() string {
	return fmt.Sprintf("%s %s (id %d): %d bytes", c.Kind, c.Name, c.ID, c.Bytes)
}

// ErrOverQuota is wrapped by *QuotaError.
var ErrOverQuota = errors.New("over the VM's memory quota")

// QuotaError is a loaded object the kernel charged more for than the
// quota: the loader unloaded it again.
type QuotaError struct {
	Quota   uint64
	Total   uint64
	Charges []Charge
}

func (e *QuotaError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v: the kernel charged %d bytes for the program's maps and programs; the quota is %d bytes; unloaded. Charges:", ErrOverQuota, e.Total, e.Quota)
	for _, c := range e.Charges {
		b.WriteString("\n  ")
		b.WriteString(c.String())
	}
	return b.String()
}

func (e *QuotaError) Unwrap() error { return ErrOverQuota }

// kernelCharges reads the kernel's figures for the guest's own maps (not
// the host's, bound by the loader) and for every program of coll: the
// memlock of each (fdinfo), plus each program's JIT image in whole pages.
func kernelCharges(coll *ebpf.Collection) ([]Charge, uint64, error) {
	var out []Charge
	var total uint64
	for name, m := range coll.Maps {
		if strings.HasPrefix(name, ReservedPrefix) || name == PortTableMap {
			continue
		}
		info, err := m.Info()
		if err != nil {
			return nil, 0, fmt.Errorf("map %s: read the kernel's memory figure: %w", name, err)
		}
		mem, _ := info.Memlock() // 0 for maps that grow as they fill (LPM tries), while empty
		id, _ := info.ID()
		out = append(out, Charge{Kind: "map", Name: name, ID: uint32(id), Bytes: mem})
		total = satAdd(total, mem)
	}
	for name, p := range coll.Programs {
		info, err := p.Info()
		if err != nil {
			return nil, 0, fmt.Errorf("program %s: read the kernel's memory figure: %w", name, err)
		}
		mem, _ := info.Memlock()
		if jit, err := info.JitedSize(); err == nil {
			mem += roundUp(uint64(jit), pageSize)
		}
		id, _ := info.ID()
		out = append(out, Charge{Kind: "program", Name: name, ID: uint32(id), Bytes: mem})
		total = satAdd(total, mem)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Bytes != out[j].Bytes {
			return out[i].Bytes > out[j].Bytes
		}
		return out[i].Kind+out[i].Name < out[j].Kind+out[j].Name
	})
	return out, total, nil
}

// checkKernelQuota refuses a loaded collection whose kernel figures add up
// to more than the quota.
func checkKernelQuota(coll *ebpf.Collection, lim Limits) error {
	charges, total, err := kernelCharges(coll)
	if err != nil {
		return err
	}
	if total > lim.Memory {
		return &QuotaError{Quota: lim.Memory, Total: total, Charges: charges}
	}
	return nil
}
