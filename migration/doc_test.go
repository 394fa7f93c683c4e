package migration

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
)

func sampleDoc() *Document {
	obj := []byte("an object")
	sum := sha256.Sum256(obj)
	d := New()
	d.Final = true
	d.Host = "a"
	d.VM = VM{Name: "vm1", MAC: "02:00:00:00:00:01", Uplink: "eth0", Queues: []int{1}, Ports: []Port{{Port: 1, Ifname: "p1"}}}
	d.Program = &Program{ID: 7, SHA256: hex.EncodeToString(sum[:]), Entry: "prog", Object: obj,
		History: []Origin{{Host: "z", ID: 3, SHA256: hex.EncodeToString(sum[:])}}}
	d.Maps = []Map{
		{Name: "h", Type: "Hash", KeySize: 4, ValueSize: 8, MaxEntries: 4, Entries: []Entry{{Key: Hex{1, 0, 0, 0}, Value: Hex{9, 0, 0, 0, 0, 0, 0, 0}}}},
		{Name: "p", Type: "PerCPUArray", KeySize: 4, ValueSize: 4, MaxEntries: 1, CPUs: 2, Entries: []Entry{{Key: Hex{0, 0, 0, 0}, PerCPU: []Hex{{1, 0, 0, 0}, {2, 0, 0, 0}}}}},
		{Name: "q", Type: "Queue", ValueSize: 4, MaxEntries: 2, Entries: []Entry{{Value: Hex{5, 0, 0, 0}}}},
	}
	return d
}

// A document survives Encode and Decode unchanged; keys and values are hex.
func TestDocumentRoundTrip(t *testing.T) {
	d := sampleDoc()
	b, err := d.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`"key":"01000000"`)) || !bytes.Contains(b, []byte(`"format":"xdp-hostd-vm-export","version":1`)) {
		t.Errorf("encoding: %s", b)
	}
	back, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := back.Encode()
	if !bytes.Equal(b, b2) {
		t.Errorf("round trip differs:\n%s\n%s", b, b2)
	}
}

// Another version or format, damaged objects and entries that do not fit
// their map are refused, each with a message naming what is wrong.
func TestDocumentRefused(t *testing.T) {
	edit := func(f func(m map[string]any)) []byte {
		b, _ := sampleDoc().Encode()
		var m map[string]any
		json.Unmarshal(b, &m)
		f(m)
		out, _ := json.Marshal(m)
		return out
	}
	mapsOf := func(m map[string]any) []any { return m["maps"].([]any) }
	for _, c := range []struct {
		name string
		doc  []byte
		says string
	}{
		{"version 2", edit(func(m map[string]any) { m["version"] = 2; m["new_field"] = true }), "version 2; this xdp-hostd reads version 1"},
		{"version 0", edit(func(m map[string]any) { delete(m, "version") }), "version 0"},
		{"format", edit(func(m map[string]any) { m["format"] = "other" }), `format "other"`},
		{"not JSON", []byte("{"), "not a JSON object"},
		{"unknown field", edit(func(m map[string]any) { m["extra"] = 1 }), `unknown field "extra"`},
		{"damaged object", edit(func(m map[string]any) { m["program"].(map[string]any)["object"] = "AAAA" }), "damaged"},
		{"no name", edit(func(m map[string]any) { m["vm"].(map[string]any)["name"] = "" }), "name and mac are required"},
		{"key size", edit(func(m map[string]any) { mapsOf(m)[0].(map[string]any)["key_size"] = 8 }), "map h entry 0: key of 4 bytes; the map's are 8"},
		{"cpus", edit(func(m map[string]any) { mapsOf(m)[1].(map[string]any)["cpus"] = 3 }), "map p entry 0: 2 per-CPU values; the map has 3 CPUs"},
		{"type", edit(func(m map[string]any) { mapsOf(m)[0].(map[string]any)["type"] = "RingBuf" }), `map h: type "RingBuf" cannot be carried`},
		{"too many", edit(func(m map[string]any) { mapsOf(m)[2].(map[string]any)["max_entries"] = 0 }), "map q: 1 entries, more than its 0"},
		{"queue key", edit(func(m map[string]any) {
			mapsOf(m)[2].(map[string]any)["entries"].([]any)[0].(map[string]any)["key"] = "00"
		}), "a Queue has no keys"},
		{"hex", edit(func(m map[string]any) {
			mapsOf(m)[0].(map[string]any)["entries"].([]any)[0].(map[string]any)["key"] = "zz"
		}), "not hex"},
		{"twice", edit(func(m map[string]any) { m["maps"] = append(mapsOf(m), mapsOf(m)[0]) }), "map h listed twice"},
	} {
		_, err := Decode(c.doc)
		if !errors.Is(err, ErrDocument) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v, want an ErrDocument saying %q", c.name, err, c.says)
		}
	}
}

// Per-CPU values: kept CPU by CPU when the CPU counts match; otherwise
// summed field by field (with carries, wrapping) onto CPU 0; a value with
// no sum (a union) is refused.
func TestPerCPUValues(t *testing.T) {
	u64 := &btf.Int{Name: "u64", Size: 8}
	u32 := &btf.Int{Name: "u32", Size: 4}
	st := &btf.Struct{Name: "stats", Size: 16, Members: []btf.Member{
		{Name: "packets", Type: u64, Offset: 0},
		{Name: "bytes", Type: &btf.Array{Type: u32, Index: u32, Nelems: 2}, Offset: 64},
	}}
	src := []Hex{
		{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff},
		{1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0},
		{1, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0},
	}
	same, err := PerCPUValues(src, 3, nil)
	if err != nil || !bytes.Equal(same[1], src[1]) || !bytes.Equal(same[2], src[2]) {
		t.Errorf("same CPU count: %x, %v", same, err)
	}
	for _, cpus := range []int{2, 4} {
		got, err := PerCPUValues(src, cpus, st)
		if err != nil {
			t.Fatal(err)
		}
		want := []byte{1, 0, 0, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0} // 0xffffffff+2; 6; 0xffffffff+1 wraps in a u32
		if len(got) != cpus || !bytes.Equal(got[0], want) {
			t.Errorf("%d CPUs: %x, want %x on CPU 0", cpus, got, want)
		}
		for _, v := range got[1:] {
			if !bytes.Equal(v, make([]byte, 16)) {
				t.Errorf("%d CPUs: other CPUs %x, want zeros", cpus, v)
			}
		}
	}
	union := &btf.Union{Name: "u", Size: 8, Members: []btf.Member{{Name: "a", Type: u64}}}
	if _, err := PerCPUValues(src[:2], 3, union); err == nil || !strings.Contains(err.Error(), "*btf.Union") {
		t.Errorf("union: %v", err)
	}
	if _, err := PerCPUValues(src, 2, nil); err == nil || !strings.Contains(err.Error(), "no BTF") {
		t.Errorf("no BTF: %v", err)
	}
}
