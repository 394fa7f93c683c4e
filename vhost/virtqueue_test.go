package vhost

import (
	"errors"
	"math"
	"testing"
)

type vqFixture struct {
	g   *guestMem
	mem *MemoryTable
	r   *guestRing
	buf uint64 // GPA of a 64 KiB data area
}

func newVQFixture(t testing.TB, size uint16) *vqFixture {
	g := newGuestMem(t, 1<<20, 1<<16)
	f := &vqFixture{g: g, r: newGuestRing(g, size)}
	f.buf = g.alloc(1<<16, 4096)
	f.mem = g.table(t)
	return f
}

func (f *vqFixture) queue(t testing.TB, mod func(*VirtqueueConfig)) *Virtqueue {
	t.Helper()
	cfg := f.r.config(0)
	cfg.Logger = testLogger(t)
	if mod != nil {
		mod(&cfg)
	}
	q, err := NewVirtqueue(f.mem, cfg)
	if err != nil {
		t.Fatalf("NewVirtqueue: %v", err)
	}
	return q
}

func TestVirtqueuePop(t *testing.T) {
	f := newVQFixture(t, 8)
	q := f.queue(t, nil)
	var c Chain
	if ok, err := q.Pop(&c); ok || err != nil {
		t.Fatalf("empty ring: Pop = %v, %v", ok, err)
	}
	copy(f.g.at(f.buf, 4), "abcd")
	// head 2: readable 4 bytes -> readable 0 bytes -> writable 100 -> writable 50
	f.r.setDesc(2, f.buf, 4, descFNext, 5)
	f.r.setDesc(5, f.buf+4, 0, descFNext, 0)
	f.r.setDesc(0, f.buf+100, 100, descFNext|descFWrite, 7)
	f.r.setDesc(7, f.buf+200, 50, descFWrite, 0)
	f.r.setDesc(3, f.buf+300, 10, 0, 0)
	f.r.offer(2, 3)
	if n, err := q.Pending(); n != 2 || err != nil {
		t.Fatalf("Pending = %d, %v", n, err)
	}
	ok, err := q.Pop(&c)
	if !ok || err != nil {
		t.Fatalf("Pop = %v, %v", ok, err)
	}
	if c.Head != 2 || len(c.Readable) != 2 || len(c.Writable) != 2 || c.ReadLen != 4 || c.WriteLen != 150 {
		t.Fatalf("chain %+v", c)
	}
	if string(c.Readable[0]) != "abcd" {
		t.Fatalf("readable %q", c.Readable[0])
	}
	copy(c.Writable[1], "xyz")
	if string(f.g.at(f.buf+200, 3)) != "xyz" {
		t.Fatal("write not visible to the guest")
	}
	ok, _ = q.Pop(&c)
	if !ok || c.Head != 3 || c.ReadLen != 10 || len(c.Writable) != 0 {
		t.Fatalf("second chain %+v", c)
	}
	if q.LastAvail() != 2 {
		t.Fatalf("LastAvail %d", q.LastAvail())
	}
	// Rewind gives chains back.
	q.Rewind(1)
	if ok, _ := q.Pop(&c); !ok || c.Head != 3 {
		t.Fatal("Rewind did not give the chain back")
	}

	// Used entries are invisible until published, then appear with one idx.
	q.PushUsed(2, 150)
	q.PushUsed(3, 0)
	if f.r.usedIdx() != 0 {
		t.Fatal("used idx moved before PublishUsed")
	}
	if !q.PublishUsed() {
		t.Fatal("no notify without NO_INTERRUPT")
	}
	got := f.r.takeUsed()
	if len(got) != 2 || got[0] != (usedElem{2, 150}) || got[1] != (usedElem{3, 0}) {
		t.Fatalf("used %+v", got)
	}
	if q.PublishUsed() {
		t.Fatal("notify for an empty publish")
	}
	if err := q.PushUsed(8, 0); err == nil {
		t.Fatal("PushUsed accepted a head beyond the queue")
	}
}

func TestVirtqueueWraparound(t *testing.T) {
	f := newVQFixture(t, 4)
	f.r.nextAvail = 65534
	f.r.setUsedIdx(65534)
	q := f.queue(t, func(c *VirtqueueConfig) { c.LastAvail = 65534 })
	for i := range 4 {
		f.r.setDesc(i, f.buf+uint64(i)*16, 16, descFWrite, 0)
	}
	var c Chain
	for round := range 5 {
		f.r.offer(0, 1, 2, 3)
		for i := range 4 {
			if ok, err := q.Pop(&c); !ok || err != nil || c.Head != uint16(i) {
				t.Fatalf("round %d pop %d: %v %v head %d", round, i, ok, err, c.Head)
			}
			q.PushUsed(c.Head, 16)
		}
		q.PublishUsed()
		if u := f.r.takeUsed(); len(u) != 4 {
			t.Fatalf("round %d: %d used", round, len(u))
		}
	}
	if q.LastAvail() != (65534+20)%65536 {
		t.Fatalf("LastAvail %d", q.LastAvail())
	}
}

func TestVirtqueueIndirect(t *testing.T) {
	f := newVQFixture(t, 8)
	q := f.queue(t, func(c *VirtqueueConfig) { c.Indirect = true })
	table := f.g.alloc(3*16, 16)
	tb := f.g.at(table, 48)
	putDesc(tb[0:], f.buf, 12, descFNext, 2)
	putDesc(tb[32:], f.buf+12, 1000, descFNext, 1)
	putDesc(tb[16:], f.buf+2000, 500, descFWrite, 0)
	f.r.setDesc(4, table, 48, descFIndirect, 0)
	f.r.offer(4)
	var c Chain
	if ok, err := q.Pop(&c); !ok || err != nil {
		t.Fatalf("Pop: %v %v", ok, err)
	}
	if c.Head != 4 || c.ReadLen != 1012 || c.WriteLen != 500 || len(c.Readable) != 2 {
		t.Fatalf("chain %+v", c)
	}
}

// TestVirtqueueHostile drives every way a driver can corrupt a queue: each
// must break the queue with a reason, never panic, and keep it broken.
func TestVirtqueueHostile(t *testing.T) {
	tests := []struct {
		name     string
		indirect bool
		setup    func(f *vqFixture)
	}{
		{"loop", false, func(f *vqFixture) {
			f.r.setDesc(0, f.buf, 1, descFNext, 1)
			f.r.setDesc(1, f.buf, 1, descFNext, 0)
			f.r.offer(0)
		}},
		{"self loop", false, func(f *vqFixture) {
			f.r.setDesc(3, f.buf, 1, descFNext, 3)
			f.r.offer(3)
		}},
		{"head beyond size", false, func(f *vqFixture) { f.r.offer(8) }},
		{"next beyond size", false, func(f *vqFixture) {
			f.r.setDesc(0, f.buf, 1, descFNext, 9)
			f.r.offer(0)
		}},
		{"avail idx jumps", false, func(f *vqFixture) { f.r.setAvailIdx(9) }},
		{"avail idx goes back", false, func(f *vqFixture) { f.r.setAvailIdx(0xffff) }},
		{"buffer outside memory", false, func(f *vqFixture) {
			f.r.setDesc(0, 0x10, 100, 0, 0)
			f.r.offer(0)
		}},
		{"buffer crosses regions", false, func(f *vqFixture) {
			r0 := f.g.regions[0]
			f.r.setDesc(0, r0.GuestPhysAddr+r0.Size-8, 16, 0, 0)
			f.r.offer(0)
		}},
		{"buffer address overflows", false, func(f *vqFixture) {
			f.r.setDesc(0, math.MaxUint64-4, 16, descFWrite, 0)
			f.r.offer(0)
		}},
		{"buffer past the end", false, func(f *vqFixture) {
			r1 := f.g.regions[1]
			f.r.setDesc(0, r1.GuestPhysAddr+r1.Size-8, math.MaxUint32, descFWrite, 0)
			f.r.offer(0)
		}},
		{"readable after writable", false, func(f *vqFixture) {
			f.r.setDesc(0, f.buf, 1, descFWrite|descFNext, 1)
			f.r.setDesc(1, f.buf, 1, 0, 0)
			f.r.offer(0)
		}},
		{"indirect not negotiated", false, func(f *vqFixture) {
			t := f.g.alloc(16, 16)
			putDesc(f.g.at(t, 16), f.buf, 1, 0, 0)
			f.r.setDesc(0, t, 16, descFIndirect, 0)
			f.r.offer(0)
		}},
		{"indirect table outside memory", true, func(f *vqFixture) {
			f.r.setDesc(0, 0x1000, 16, descFIndirect, 0)
			f.r.offer(0)
		}},
		{"indirect table odd length", true, func(f *vqFixture) {
			t := f.g.alloc(32, 16)
			f.r.setDesc(0, t, 24, descFIndirect, 0)
			f.r.offer(0)
		}},
		{"indirect table empty", true, func(f *vqFixture) {
			f.r.setDesc(0, f.buf, 0, descFIndirect, 0)
			f.r.offer(0)
		}},
		{"indirect table longer than queue", true, func(f *vqFixture) {
			t := f.g.alloc(16*9, 16)
			f.r.setDesc(0, t, 16*9, descFIndirect, 0)
			f.r.offer(0)
		}},
		{"indirect with next", true, func(f *vqFixture) {
			t := f.g.alloc(16, 16)
			putDesc(f.g.at(t, 16), f.buf, 1, 0, 0)
			f.r.setDesc(0, t, 16, descFIndirect|descFNext, 1)
			f.r.setDesc(1, f.buf, 1, 0, 0)
			f.r.offer(0)
		}},
		{"nested indirect", true, func(f *vqFixture) {
			t := f.g.alloc(16, 16)
			putDesc(f.g.at(t, 16), t, 16, descFIndirect, 0)
			f.r.setDesc(0, t, 16, descFIndirect, 0)
			f.r.offer(0)
		}},
		{"indirect loop", true, func(f *vqFixture) {
			t := f.g.alloc(32, 16)
			putDesc(f.g.at(t, 16), f.buf, 1, descFNext, 1)
			putDesc(f.g.at(t+16, 16), f.buf, 1, descFNext, 0)
			f.r.setDesc(0, t, 32, descFIndirect, 0)
			f.r.offer(0)
		}},
		{"indirect next beyond table", true, func(f *vqFixture) {
			t := f.g.alloc(32, 16)
			putDesc(f.g.at(t, 16), f.buf, 1, descFNext, 2)
			f.r.setDesc(0, t, 32, descFIndirect, 0)
			f.r.offer(0)
		}},
		{"direct plus indirect longer than queue", true, func(f *vqFixture) {
			t := f.g.alloc(16*8, 16)
			for i := range 8 {
				putDesc(f.g.at(t+16*uint64(i), 16), f.buf, 1, descFNext, uint16(i+1))
			}
			putDesc(f.g.at(t+16*7, 16), f.buf, 1, 0, 0)
			f.r.setDesc(0, f.buf, 1, descFNext, 1)
			f.r.setDesc(1, t, 16*8, descFIndirect, 0)
			f.r.offer(0)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newVQFixture(t, 8)
			q := f.queue(t, func(c *VirtqueueConfig) { c.Indirect = tt.indirect })
			tt.setup(f)
			var c Chain
			ok, err := q.Pop(&c)
			if ok || !errors.Is(err, ErrQueueBroken) {
				t.Fatalf("Pop = %v, %v; want ErrQueueBroken", ok, err)
			}
			t.Log(err)
			if !errors.Is(q.Broken(), ErrQueueBroken) {
				t.Fatal("queue not marked broken")
			}
			// Stays broken, even if the driver repairs the ring.
			f.r.setDesc(0, f.buf, 1, 0, 0)
			if ok, err := q.Pop(&c); ok || err == nil {
				t.Fatal("broken queue popped again")
			}
			if q.PublishUsed() {
				t.Fatal("broken queue asks to notify")
			}
		})
	}
}

func TestVirtqueueConfigInvalid(t *testing.T) {
	f := newVQFixture(t, 8)
	mods := map[string]func(*VirtqueueConfig){
		"size 0":              func(c *VirtqueueConfig) { c.Size = 0 },
		"size not power of 2": func(c *VirtqueueConfig) { c.Size = 6 },
		"size too large":      func(c *VirtqueueConfig) { c.Size = 0xffff },
		"desc misaligned":     func(c *VirtqueueConfig) { c.DescAddr += 8 },
		"avail misaligned":    func(c *VirtqueueConfig) { c.AvailAddr++ },
		"used misaligned":     func(c *VirtqueueConfig) { c.UsedAddr += 2 },
		"desc outside":        func(c *VirtqueueConfig) { c.DescAddr = 0x1000 },
		"avail outside":       func(c *VirtqueueConfig) { c.AvailAddr = math.MaxUint64 - 1 },
		"used outside":        func(c *VirtqueueConfig) { c.UsedAddr = 4 },
		"used past the end": func(c *VirtqueueConfig) {
			r := f.g.regions[0]
			c.UsedAddr = r.UserAddr + r.Size - 8
		},
		"gpa instead of uva": func(c *VirtqueueConfig) { c.DescAddr = f.r.desc },
		"desc past the end": func(c *VirtqueueConfig) {
			r := f.g.regions[0]
			c.DescAddr = r.UserAddr + r.Size - 64
		},
	}
	for name, mod := range mods {
		t.Run(name, func(t *testing.T) {
			cfg := f.r.config(0)
			mod(&cfg)
			if _, err := NewVirtqueue(f.mem, cfg); err == nil {
				t.Fatal("NewVirtqueue accepted it")
			} else {
				t.Log(err)
			}
		})
	}
}

func TestNeedEvent(t *testing.T) {
	tests := []struct {
		event, nw, old uint16
		want           bool
	}{
		{0, 1, 0, true},
		{5, 3, 0, false},
		{5, 6, 3, true},
		{5, 6, 6, false},
		{2, 6, 3, false},
		{0xffff, 1, 0xfffe, true},
		{0xfffe, 0xfffe, 0xfffd, false},
	}
	for _, tt := range tests {
		if got := needEvent(tt.event, tt.nw, tt.old); got != tt.want {
			t.Errorf("needEvent(%d, %d, %d) = %v", tt.event, tt.nw, tt.old, got)
		}
	}
}

func TestVirtqueueEventIdx(t *testing.T) {
	f := newVQFixture(t, 8)
	q := f.queue(t, func(c *VirtqueueConfig) { c.EventIdx = true })
	for i := range 8 {
		f.r.setDesc(i, f.buf, 16, descFWrite, 0)
	}
	var c Chain
	batch := func(n int) bool {
		heads := make([]uint16, n)
		for i := range heads {
			heads[i] = uint16(i)
		}
		f.r.offer(heads...)
		for range n {
			if ok, _ := q.Pop(&c); !ok {
				t.Fatal("Pop failed")
			}
			q.PushUsed(c.Head, 16)
		}
		return q.PublishUsed()
	}
	// The driver wants an interrupt once used idx passes 5.
	f.r.setUsedEvent(5)
	if batch(3) {
		t.Error("notified at used idx 3 with used_event 5")
	}
	if !batch(4) {
		t.Error("not notified when used idx crossed used_event 5 (3 -> 7)")
	}
	if batch(1) {
		t.Error("notified again without a new used_event")
	}
	f.r.setUsedEvent(8)
	if !batch(1) {
		t.Error("not notified at used idx 9 with used_event 8")
	}

	// avail_event: EnableNotify asks for a kick at the next avail entry and
	// says whether entries arrived meanwhile.
	if q.EnableNotify() {
		t.Error("EnableNotify saw pending entries on an empty ring")
	}
	if got := f.r.availEvent(); got != q.LastAvail() {
		t.Errorf("avail_event %d, want %d", got, q.LastAvail())
	}
	f.r.offer(0)
	if !q.EnableNotify() {
		t.Error("EnableNotify missed a pending entry")
	}
}

func TestVirtqueueNoEventIdxFlags(t *testing.T) {
	f := newVQFixture(t, 8)
	q := f.queue(t, nil)
	f.r.setDesc(0, f.buf, 16, descFWrite, 0)
	var c Chain
	f.r.offer(0)
	q.Pop(&c)
	q.PushUsed(0, 1)
	f.r.setAvailFlags(availFNoInterupt)
	if q.PublishUsed() {
		t.Error("notified despite VRING_AVAIL_F_NO_INTERRUPT")
	}
	q.DisableNotify()
	if f.r.usedFlags()&usedFNoNotify == 0 {
		t.Error("DisableNotify did not set VRING_USED_F_NO_NOTIFY")
	}
	if f.r.usedIdx() != 1 {
		t.Error("DisableNotify changed used idx")
	}
	q.EnableNotify()
	if f.r.usedFlags()&usedFNoNotify != 0 {
		t.Error("EnableNotify did not clear VRING_USED_F_NO_NOTIFY")
	}
}

// TestVirtqueueOverfullBatch: a driver that keeps adding entries within one
// batch cannot make the device overwrite unpublished used entries.
func TestVirtqueueOverfullBatch(t *testing.T) {
	f := newVQFixture(t, 4)
	q := f.queue(t, func(c *VirtqueueConfig) { c.EventIdx = true })
	for i := range 4 {
		f.r.setDesc(i, f.buf, 16, descFWrite, 0)
	}
	f.r.setUsedEvent(0)
	var c Chain
	total := 0
	for range 3 {
		f.r.offer(0, 1, 2, 3)
		for range 4 {
			if ok, err := q.Pop(&c); !ok || err != nil {
				t.Fatal(ok, err)
			}
			if err := q.PushUsed(c.Head, 16); err != nil {
				t.Fatal(err)
			}
			total++
		}
	}
	if !q.PublishUsed() {
		t.Error("intermediate publish's notification lost")
	}
	if got := f.r.usedIdx(); int(got) != total {
		t.Errorf("used idx %d, want %d", got, total)
	}
}

func TestVirtqueueRemap(t *testing.T) {
	f := newVQFixture(t, 8)
	q := f.queue(t, nil)
	mem2 := f.g.table(t)
	if err := q.Remap(mem2); err != nil {
		t.Fatal(err)
	}
	f.mem.Close()
	f.r.setDesc(0, f.buf, 16, descFWrite, 0)
	f.r.offer(0)
	var c Chain
	if ok, err := q.Pop(&c); !ok || err != nil {
		t.Fatalf("Pop after remap: %v %v", ok, err)
	}
	copy(c.Writable[0], "remapped")
	if string(f.g.at(f.buf, 8)) != "remapped" {
		t.Fatal("write after remap lost")
	}
	// A table without the rings breaks the queue.
	g2 := newGuestMem(t, 4096)
	other, err := NewMemoryTable([]MemoryRegion{{GuestPhysAddr: 0, Size: 4096, UserAddr: 0x1000, MmapOffset: testMmapOff}}, g2.dupFDs(t))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := q.Remap(other); err == nil || !errors.Is(q.Broken(), ErrQueueBroken) {
		t.Fatalf("Remap into foreign memory: %v, broken %v", err, q.Broken())
	}
}

func BenchmarkPopPush(b *testing.B) {
	f := newVQFixture(b, 256)
	q := f.queue(b, func(c *VirtqueueConfig) { c.EventIdx = true })
	for i := range 256 {
		f.r.setDesc(i, f.buf+uint64(i)*64, 64, descFWrite, 0)
	}
	heads := make([]uint16, 32)
	var c Chain
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		for j := range heads {
			heads[j] = uint16((i*32 + j) % 256)
		}
		f.r.offer(heads...)
		for range heads {
			q.Pop(&c)
			q.PushUsed(c.Head, 64)
		}
		q.PublishUsed()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*32), "ns/chain")
}
