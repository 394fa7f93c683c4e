package zerocopy

import (
	"errors"
	"testing"
)

func TestFramePoolBulk(t *testing.T) {
	p, err := NewFramePool(8, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if p.Len() != 8 || p.Cap() != 8 {
		t.Fatalf("new pool: len %d cap %d, want 8 8", p.Len(), p.Cap())
	}
	// The lowest addresses first (in some order).
	got := make([]uint64, 3)
	if n := p.Get(got); n != 3 || got[0]+got[1]+got[2] != 0+2048+4096 || got[0]*got[1]*got[2] != 0 {
		t.Fatalf("Get(3) = %d %v, want frames 0, 2048, 4096", n, got)
	}
	// Bounded: asking for more than is left returns what is left.
	rest := make([]uint64, 100)
	if n := p.Get(rest); n != 5 || p.Len() != 0 {
		t.Fatalf("Get(100) = %d, pool left %d; want 5, 0", n, p.Len())
	}
	if n := p.Get(rest[:1]); n != 0 {
		t.Fatalf("Get from an empty pool = %d", n)
	}
	// Addresses inside a frame return the frame (RX descriptors point past
	// the headroom).
	if err := p.Put([]uint64{got[1] + 256 + 14}); err != nil {
		t.Fatal(err)
	}
	one := make([]uint64, 1)
	if n := p.Get(one); n != 1 || one[0] != got[1] {
		t.Fatalf("Get after Put(inside frame %#x) = %d %v, want that frame (LIFO)", got[1], n, one)
	}
	// All back in one call.
	if err := p.Put(append(append([]uint64{}, got...), rest[:5]...)); err != nil {
		t.Fatal(err)
	}
	if p.Len() != 8 {
		t.Fatalf("pool has %d frames after returning all, want 8", p.Len())
	}
}

func TestFramePoolRefusesDoubleFreeAndForeign(t *testing.T) {
	p, err := NewFramePool(4, 4096)
	if err != nil {
		t.Fatal(err)
	}
	a := make([]uint64, 2)
	p.Get(a)
	err = p.Put([]uint64{a[0], a[0], 4 * 4096, a[1] + 100})
	if !errors.Is(err, ErrDoubleFree) || !errors.Is(err, ErrNotInUMEM) {
		t.Fatalf("Put(dup, foreign) = %v, want ErrDoubleFree and ErrNotInUMEM", err)
	}
	if p.Len() != 4 {
		t.Fatalf("pool has %d frames, want 4 (the good ones taken, the bad ones skipped)", p.Len())
	}
	// Everything is in: any further Put is a double free, and the pool
	// never grows past its capacity.
	if err := p.Put([]uint64{0, 4096, 8192, 12288}); !errors.Is(err, ErrDoubleFree) {
		t.Fatalf("Put into a full pool = %v, want ErrDoubleFree", err)
	}
	if p.Len() != 4 || cap(p.free) != 4 {
		t.Fatalf("full pool: len %d cap %d, want 4 4", p.Len(), cap(p.free))
	}
	// Taken frames are distinct.
	all := make([]uint64, 4)
	p.Get(all)
	seen := map[uint64]bool{}
	for _, x := range all {
		if seen[x] || x%4096 != 0 || x >= 4*4096 {
			t.Fatalf("Get returned %v: want four distinct frames", all)
		}
		seen[x] = true
	}
}

func TestFramePoolErrors(t *testing.T) {
	for _, c := range []struct{ frames, size int }{{0, 2048}, {4, 0}, {4, 3000}, {-1, 2048}} {
		if _, err := NewFramePool(c.frames, c.size); err == nil {
			t.Errorf("NewFramePool(%d, %d) succeeded", c.frames, c.size)
		}
	}
}

func TestFramePoolNoAllocs(t *testing.T) {
	p, err := NewFramePool(1024, 2048)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]uint64, 256)
	allocs := testing.AllocsPerRun(100, func() {
		n := p.Get(buf)
		if err := p.Put(buf[:n]); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("Get+Put of 256 frames allocates %v times", allocs)
	}
}

func BenchmarkFramePool(b *testing.B) {
	p, err := NewFramePool(4096, 2048)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]uint64, 64)
	b.ReportAllocs()
	for b.Loop() {
		n := p.Get(buf)
		p.Put(buf[:n])
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(buf)), "ns/frame")
}
