package zerocopy

import (
	"math/rand/v2"
	"testing"
)

// The table agrees with a Go map through random puts, gets and deletes,
// with keys that collide on their home slot (granules of adjacent buffers
// and multiples of the table size).
func TestGranTableMatchesMap(t *testing.T) {
	for _, max := range []int{1, 3, 64, 256} {
		tab := newGranTable(max)
		ref := map[uint64]inflight{}
		rng := rand.New(rand.NewPCG(uint64(max), 7))
		keys := func() uint64 {
			if rng.IntN(2) == 0 {
				return uint64(rng.IntN(4 * max))
			}
			return uint64(rng.IntN(8)) * uint64(len(tab.keys))
		}
		for i := 0; i < 200000; i++ {
			k := keys()
			switch op := rng.IntN(3); {
			case op == 0 && len(ref) < max:
				v := inflight{off: rng.Uint64(), head: uint16(i)}
				tab.put(k, v)
				ref[k] = v
			case op == 1:
				tab.del(k)
				delete(ref, k)
			}
			got, ok := tab.get(k)
			want, wok := ref[k]
			if ok != wok || got != want {
				t.Fatalf("max %d, step %d: get(%d) = %v %v, want %v %v", max, i, k, got, ok, want, wok)
			}
			if tab.len() != len(ref) {
				t.Fatalf("max %d, step %d: len %d, want %d", max, i, tab.len(), len(ref))
			}
		}
		n := 0
		tab.each(func(gr uint64, v inflight) {
			if ref[gr] != v {
				t.Fatalf("each: %d = %v, want %v", gr, v, ref[gr])
			}
			n++
		})
		if n != len(ref) {
			t.Fatalf("each visited %d, want %d", n, len(ref))
		}
		tab.clear()
		if _, ok := tab.get(keys()); ok || tab.len() != 0 {
			t.Fatal("entries after clear")
		}
	}
}
