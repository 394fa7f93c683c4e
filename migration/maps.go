package migration

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// mapTypes are the map types whose contents a document carries: every
// type the guest policy allows that holds data the host can read back.
// Not carried: program arrays (the destination's load fills them from the
// object), bloom filters (their contents cannot be read; Read refuses
// them), maps of maps and ring buffers (the policy refuses them).
var mapTypes = map[string]ebpf.MapType{}

func init() {
	for _, t := range []ebpf.MapType{ebpf.Hash, ebpf.Array, ebpf.PerCPUHash, ebpf.PerCPUArray,
		ebpf.LRUHash, ebpf.LRUCPUHash, ebpf.LPMTrie, ebpf.Queue, ebpf.Stack} {
		mapTypes[t.String()] = t
	}
}

func typeNames() string {
	var n []string
	for k := range mapTypes {
		n = append(n, k)
	}
	sort.Strings(n)
	return strings.Join(n, ", ")
}

func hasKeys(t ebpf.MapType) bool { return t != ebpf.Queue && t != ebpf.Stack }

// ErrNotCarried: a map whose contents cannot be carried to another host.
var ErrNotCarried = errors.New("map contents cannot be carried")

// Read reads the whole content of map m (named name). A queue or stack is
// read by taking every element out and putting them back in the same
// order: read it with the program frozen (a final export), or the program
// may meanwhile see it emptier than it is. A bloom filter cannot be read
// back: ErrNotCarried.
func Read(name string, m *ebpf.Map) (Map, error) {
	t := m.Type()
	out := Map{Name: name, Type: t.String(), KeySize: m.KeySize(), ValueSize: m.ValueSize(), MaxEntries: m.MaxEntries(), Entries: []Entry{}}
	if _, ok := mapTypes[out.Type]; !ok {
		return out, fmt.Errorf("map %s: %w: a %s's contents cannot be read back (carried: %s)", name, ErrNotCarried, t, typeNames())
	}
	switch {
	case !hasKeys(t):
		return out, readPopped(name, m, &out)
	case perCPU(t):
		cpus, err := ebpf.PossibleCPU()
		if err != nil {
			return out, err
		}
		out.CPUs = cpus
		key := make([]byte, m.KeySize())
		vals := make([][]byte, cpus)
		for i := range vals {
			vals[i] = make([]byte, m.ValueSize())
		}
		it := m.Iterate()
		for it.Next(&key, vals) {
			e := Entry{Key: clone(key), PerCPU: make([]Hex, cpus)}
			for i, v := range vals {
				e.PerCPU[i] = clone(v)
			}
			out.Entries = append(out.Entries, e)
		}
		if err := it.Err(); err != nil {
			return out, fmt.Errorf("map %s: read: %w", name, err)
		}
	default:
		key := make([]byte, m.KeySize())
		val := make([]byte, m.ValueSize())
		it := m.Iterate()
		for it.Next(&key, &val) {
			out.Entries = append(out.Entries, Entry{Key: clone(key), Value: clone(val)})
		}
		if err := it.Err(); err != nil {
			return out, fmt.Errorf("map %s: read: %w", name, err)
		}
	}
	return out, nil
}

func clone(b []byte) Hex { return append(Hex(nil), b...) }

// readPopped reads a queue or stack by popping everything, then pushes it
// back so that the map is as it was.
func readPopped(name string, m *ebpf.Map, out *Map) error {
	for range m.MaxEntries() + 1 {
		v := make([]byte, m.ValueSize())
		if err := m.LookupAndDelete(nil, &v); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				break
			}
			push(m, out.Entries)
			return fmt.Errorf("map %s: read: %w", name, err)
		}
		out.Entries = append(out.Entries, Entry{Value: v})
	}
	if err := push(m, out.Entries); err != nil {
		return fmt.Errorf("map %s: put its elements back after reading them: %w", name, err)
	}
	return nil
}

// push puts popped elements (in the order they left) into a queue or
// stack so that they leave it again in that order.
func push(m *ebpf.Map, es []Entry) error {
	for i := range es {
		e := es[i]
		if m.Type() == ebpf.Stack {
			e = es[len(es)-1-i]
		}
		if err := m.Update(nil, []byte(e.Value), ebpf.UpdateAny); err != nil {
			return err
		}
	}
	return nil
}

// Write puts the content c into map m, created from spec (the
// destination's object declares the map): the map must be empty (just
// created). The document's map must match the spec: type, key and value
// sizes, and at most its max entries.
//
// Per-CPU values: if the source had as many CPUs as this host, each CPU
// gets its own value back. Otherwise each entry's values are summed over
// the source's CPUs and the sum is CPU 0's value, the others zero: what a
// reader that sums over CPUs (as every per-CPU counter is read) sees is
// unchanged. The sum is taken field by field with the value's BTF type
// (integers, structs and arrays of them, wrapping); a value of any other
// shape (a union, a bitfield, no BTF) is refused.
func Write(c Map, spec *ebpf.MapSpec, m *ebpf.Map) error {
	if err := c.validate(); err != nil {
		return err
	}
	t := mapTypes[c.Type]
	switch {
	case t != spec.Type:
		return fmt.Errorf("map %s: the export has a %s; the program declares a %s", c.Name, c.Type, spec.Type)
	case c.ValueSize != m.ValueSize() || (hasKeys(t) && c.KeySize != m.KeySize()):
		return fmt.Errorf("map %s: the export has keys of %d and values of %d bytes; the program's map has %d and %d", c.Name, c.KeySize, c.ValueSize, m.KeySize(), m.ValueSize())
	case uint32(len(c.Entries)) > m.MaxEntries():
		return fmt.Errorf("map %s: the export has %d entries; the program's map holds %d", c.Name, len(c.Entries), m.MaxEntries())
	}
	if !hasKeys(t) {
		if err := push(m, c.Entries); err != nil {
			return fmt.Errorf("map %s: write: %w", c.Name, err)
		}
		return nil
	}
	var cpus int
	if perCPU(t) {
		var err error
		if cpus, err = ebpf.PossibleCPU(); err != nil {
			return err
		}
	}
	for i, e := range c.Entries {
		var err error
		if cpus == 0 {
			err = m.Update([]byte(e.Key), []byte(e.Value), ebpf.UpdateAny)
		} else {
			var vals [][]byte
			if vals, err = PerCPUValues(e.PerCPU, cpus, spec.Value); err == nil {
				err = m.Update([]byte(e.Key), vals, ebpf.UpdateAny)
			}
		}
		if err != nil {
			return fmt.Errorf("map %s: entry %d (key %x): %w", c.Name, i, []byte(e.Key), err)
		}
	}
	return nil
}

// PerCPUValues makes one entry's values for a host with cpus CPUs from the
// source's values (see Write): the same values when the counts are equal,
// else their sum (typed by value) on CPU 0 and zeros.
func PerCPUValues(src []Hex, cpus int, value btf.Type) ([][]byte, error) {
	out := make([][]byte, cpus)
	if len(src) == cpus {
		for i, v := range src {
			out[i] = append([]byte(nil), v...)
		}
		return out, nil
	}
	size := 0
	if len(src) > 0 {
		size = len(src[0])
	}
	for i := range out {
		out[i] = make([]byte, size)
	}
	if value == nil {
		return nil, fmt.Errorf("per-CPU values of %d CPUs cannot be summed for this host's %d CPUs: the map's value has no BTF type", len(src), cpus)
	}
	fields, err := intFields(value, 0)
	if err != nil {
		return nil, fmt.Errorf("per-CPU values of %d CPUs cannot be summed for this host's %d CPUs: %w", len(src), cpus, err)
	}
	for _, v := range src {
		for _, f := range fields {
			if f.off+f.size > len(v) {
				return nil, fmt.Errorf("per-CPU value of %d bytes is shorter than its type", len(v))
			}
			addLE(out[0][f.off:f.off+f.size], v[f.off:f.off+f.size])
		}
	}
	return out, nil
}

type field struct{ off, size int }

// intFields lists the integers a value of type t is made of, with their
// offsets: what summing two values adds up.
func intFields(t btf.Type, off int) ([]field, error) {
	switch t := btf.UnderlyingType(t).(type) {
	case *btf.Int:
		return []field{{off, int(t.Size)}}, nil
	case *btf.Enum:
		return []field{{off, int(t.Size)}}, nil
	case *btf.Array:
		elem, err := btf.Sizeof(t.Type)
		if err != nil {
			return nil, err
		}
		var out []field
		for i := range int(t.Nelems) {
			f, err := intFields(t.Type, off+i*elem)
			if err != nil {
				return nil, err
			}
			out = append(out, f...)
		}
		return out, nil
	case *btf.Struct:
		var out []field
		for _, m := range t.Members {
			if m.BitfieldSize != 0 {
				return nil, fmt.Errorf("the value has a bitfield (%s.%s)", t.Name, m.Name)
			}
			f, err := intFields(m.Type, off+int(m.Offset.Bytes()))
			if err != nil {
				return nil, err
			}
			out = append(out, f...)
		}
		return out, nil
	default:
		return nil, fmt.Errorf("the value has a %T, which has no sum", t)
	}
}

// addLE adds the little-endian unsigned integer b to a, wrapping.
func addLE(a, b []byte) {
	var carry uint16
	for i := range a {
		s := uint16(a[i]) + uint16(b[i]) + carry
		a[i], carry = byte(s), s>>8
	}
}

func perCPU(t ebpf.MapType) bool {
	return t == ebpf.PerCPUHash || t == ebpf.PerCPUArray || t == ebpf.LRUCPUHash
}
