package vhost

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// placeGeneral puts f into RX queue pair 0 the way Offer does, but with
// place's direct path off (the scatter loop), and publishes it.
func placeGeneral(t *testing.T, d *NetDevice, f []byte) {
	t.Helper()
	d.mu.RLock()
	defer d.mu.RUnlock()
	q := d.queues[0]
	q.mu.Lock()
	defer q.mu.Unlock()
	mrg := d.features&FeatureNetMrgRxbuf != 0
	if n, err := d.place(q, q.vq, f, mrg, nil, false); n != 1 || err != nil {
		t.Fatalf("general path: place = %d, %v", n, err)
	}
	q.vq.PublishUsed()
}

// postOne makes one device-writable buffer of size bytes at gpa available on
// RX queue 0, after filling it and 16 bytes either side with 0xAA.
func postOne(f *frontend, gpa uint64, size uint32) {
	clear16 := f.g.at(gpa-16, uint64(size)+32)
	for i := range clear16 {
		clear16[i] = 0xAA
	}
	r := f.rings[0]
	d := f.next[0] % r.size
	f.next[0]++
	r.setDesc(int(d), gpa, size, descFWrite, 0)
	r.offer(d)
}

// TestDeviceRXDirectPlace: a frame whose header and bytes fit the chain's
// first buffer is written straight into it (placeOne), and the guest sees
// the same bytes the general scatter path writes into the same buffer:
// offload fields zero, num_buffers 1 with a 12-byte header, the frame, and
// nothing outside header+frame. A buffer one byte too small takes the
// general path: merged over two buffers with MRG_RXBUF, dropped without
// (the buffer kept for the next frame).
func TestDeviceRXDirectPlace(t *testing.T) {
	for _, tc := range []struct {
		name     string
		features uint64 // 0: setup's default (MRG_RXBUF, VERSION_1)
		hdr      int
	}{
		{"mrg", 0, 12},
		{"version1", FeatureVersion1 | FeatureRingEventIdx | FeatureProtocolFeatures, 12},
		{"legacy", FeatureRingEventIdx | FeatureProtocolFeatures, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, NetConfig{})
			f := dial(t, ts.path)
			f.setup(setupOpts{features: tc.features})
			if f.hdr != tc.hdr {
				t.Fatalf("test setup: header %d bytes, want %d", f.hdr, tc.hdr)
			}
			mrg := ts.dev.features&FeatureNetMrgRxbuf != 0
			fr := frame(300, 7)
			need := uint32(tc.hdr + len(fr))
			// Direct: Offer into one buffer of exactly header+frame.
			a := f.g.alloc(uint64(need)+64, 64) + 16
			postOne(f, a, need)
			if placed, consumed, err := ts.dev.Offer(0, [][]byte{fr}); placed != 1 || consumed != 1 || err != nil {
				t.Fatalf("Offer = %d, %d, %v; want 1, 1, nil", placed, consumed, err)
			}
			// General: the same frame into a buffer of the same size.
			b := f.g.alloc(uint64(need)+64, 64) + 16
			postOne(f, b, need)
			placeGeneral(t, ts.dev, fr)
			used := f.rings[0].takeUsed()
			if len(used) != 2 || used[0].len != need || used[1].len != need {
				t.Fatalf("used entries %+v, want two of %d bytes", used, need)
			}
			direct, general := f.g.at(a-16, uint64(need)+32), f.g.at(b-16, uint64(need)+32)
			if !bytes.Equal(direct, general) {
				t.Fatalf("direct path wrote\n%x\ngeneral path wrote\n%x", direct, general)
			}
			want := append(bytes.Repeat([]byte{0xAA}, 16), make([]byte, tc.hdr)...)
			if tc.hdr == 12 {
				want[16+10] = 1 // num_buffers
			}
			want = append(append(want, fr...), bytes.Repeat([]byte{0xAA}, 16)...)
			if !bytes.Equal(direct, want) {
				t.Fatalf("guest buffer (16 bytes either side)\n%x\nwant\n%x", direct, want)
			}

			// One byte too small.
			c := f.g.alloc(uint64(need)+64, 64) + 16
			postOne(f, c, need-1)
			if !mrg {
				placed, consumed, err := ts.dev.Offer(0, [][]byte{fr, frame(100, 8)})
				if placed != 1 || consumed != 2 || err != nil {
					t.Fatalf("Offer = %d, %d, %v; want 1, 2, nil (the big frame dropped)", placed, consumed, err)
				}
				small := frame(100, 8)
				used := f.rings[0].takeUsed()
				if len(used) != 1 || used[0].len != uint32(tc.hdr+len(small)) {
					t.Fatalf("used entries %+v, want the small frame's", used)
				}
				if got := f.g.at(c+uint64(tc.hdr), uint64(len(small))); !bytes.Equal(got, small) {
					t.Fatal("small frame not in the kept buffer")
				}
				if st := ts.dev.Stats()[0]; st.Drops != 1 || st.Packets != 2 { // placeGeneral counts nothing
					t.Errorf("stats %+v, want 1 drop, 2 packets", st)
				}
				return
			}
			d := f.g.alloc(64, 64) + 16
			postOne(f, d, 16)
			if placed, _, err := ts.dev.Offer(0, [][]byte{fr}); placed != 1 || err != nil {
				t.Fatalf("Offer = %d, %v; want 1", placed, err)
			}
			used = f.rings[0].takeUsed()
			if len(used) != 2 || used[0].len != need-1 || used[1].len != 1 {
				t.Fatalf("used entries %+v, want %d and 1 bytes", used, need-1)
			}
			hdr := f.g.at(c, uint64(tc.hdr))
			if nb := binary.LittleEndian.Uint16(hdr[10:]); nb != 2 || !bytes.Equal(hdr[:10], make([]byte, 10)) {
				t.Fatalf("header %x, want zero offload fields and num_buffers 2", hdr)
			}
			got := append(bytes.Clone(f.g.at(c+uint64(tc.hdr), uint64(len(fr)-1))), f.g.at(d, 1)...)
			if !bytes.Equal(got, fr) {
				t.Fatal("frame corrupted over two buffers")
			}
			if f.g.at(c+uint64(need)-1, 1)[0] != 0xAA || f.g.at(d+1, 1)[0] != 0xAA {
				t.Fatal("written beyond the used lengths")
			}
		})
	}
}

// TestDirtyLogDirectPlace: the direct path marks the pages of exactly the
// bytes it wrote: here two frames, each in one buffer that straddles a page
// boundary by one byte (the last byte of the first, the first of the second).
func TestDirtyLogDirectPlace(t *testing.T) {
	ts := startServer(t, NetConfig{})
	f := dial(t, ts.path)
	f.setup(setupOpts{size: 64})
	l := f.startLogging()
	fr := frame(200, 3)
	need := uint64(f.hdr + len(fr))
	p := f.g.alloc(3*LogPageSize, LogPageSize)
	q := f.g.alloc(3*LogPageSize, LogPageSize)
	postOne(f, p+LogPageSize-(need-1), uint32(need))
	postOne(f, q+LogPageSize-1, uint32(need))
	l.reset()
	snap := snapshot(f.g)
	if n, err := ts.dev.Deliver(0, [][]byte{fr, fr}); n != 2 {
		t.Fatalf("Deliver = %d, %v", n, err)
	}
	changed := changedPages(f.g, snap)
	checkLogged(t, "RX direct", l, changed, append(usedPages(f.rings[0]), usedPages(f.rings[1])...)...)
	for _, pg := range []uint64{p, p + LogPageSize, q, q + LogPageSize} {
		if !l.marked(pg) {
			t.Errorf("page %#x of a buffer not marked", pg)
		}
	}
	for _, pg := range []uint64{p + 2*LogPageSize, q + 2*LogPageSize} {
		if l.marked(pg) {
			t.Errorf("page %#x after a buffer marked", pg)
		}
	}
	if m := ts.dev.LogMissed(); m != 0 {
		t.Errorf("%d page writes not logged", m)
	}
}
