package vhost

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestWaitRXWakesOnKick: with the guest's RX ring empty, WaitRX asks the
// driver to kick (avail_event with EVENT_IDX, the used flags without) and
// returns as soon as the driver posts buffers and kicks, long before its
// timeout; it times out when nothing comes; and afterwards the driver is
// asked not to kick again.
func TestWaitRXWakesOnKick(t *testing.T) {
	for _, tc := range []struct {
		name     string
		features uint64
	}{
		{"event-idx", 0},
		{"flags", FeatureVersion1 | FeatureNetMrgRxbuf | FeatureProtocolFeatures},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, NetConfig{})
			f := dial(t, ts.path)
			f.setup(setupOpts{features: tc.features})
			eventIdx := ts.dev.AckedFeatures()&FeatureRingEventIdx != 0
			r := f.rings[0]

			// Nothing posted: the wait times out.
			start := time.Now()
			if ok, err := ts.dev.WaitRX(0, 30*time.Millisecond); ok || err != nil {
				t.Fatalf("WaitRX on an empty ring = %v, %v; want a timeout", ok, err)
			}
			if d := time.Since(start); d < 25*time.Millisecond || d > 2*time.Second {
				t.Fatalf("timeout took %v, want about 30ms", d)
			}

			// The driver posts buffers 50 ms into a 5 s wait and kicks if
			// asked to, as virtio's virtqueue_kick_prepare does.
			type result struct {
				ok  bool
				err error
				d   time.Duration
			}
			done := make(chan result, 1)
			go func() {
				s := time.Now()
				ok, err := ts.dev.WaitRX(0, 5*time.Second)
				done <- result{ok, err, time.Since(s)}
			}()
			time.Sleep(50 * time.Millisecond)
			old := r.nextAvail
			f.postRX(0, 8, 2048)
			var kick bool
			if eventIdx {
				ev := r.availEvent()
				kick = uint16(r.nextAvail-ev-1) < uint16(r.nextAvail-old)
			} else {
				kick = r.usedFlags()&usedFNoNotify == 0
			}
			if !kick {
				t.Fatalf("the waiting device did not ask for a kick (avail_event %d, used flags %#x)", r.availEvent(), r.usedFlags())
			}
			unix.Write(f.kick[0], eventOne[:])
			select {
			case res := <-done:
				if !res.ok || res.err != nil || res.d > 2*time.Second {
					t.Fatalf("WaitRX = %v, %v after %v; want true well before its 5s timeout", res.ok, res.err, res.d)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("WaitRX did not return")
			}
			if !eventIdx && r.usedFlags()&usedFNoNotify == 0 {
				t.Error("after the wait the driver is still asked to kick on every buffer")
			}
			if n, err := ts.dev.Deliver(0, [][]byte{frame(64, 1)}); n != 1 {
				t.Fatalf("Deliver after the wait = %d, %v", n, err)
			}

			// Buffers already there: no wait at all.
			start = time.Now()
			if ok, err := ts.dev.WaitRX(0, 5*time.Second); !ok || err != nil || time.Since(start) > time.Second {
				t.Fatalf("WaitRX with buffers posted = %v, %v after %v", ok, err, time.Since(start))
			}
		})
	}
}

// TestWaitRXNotReady: no front-end, no wait.
func TestWaitRXNotReady(t *testing.T) {
	d, err := NewNetDevice(NetConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.WaitRX(0, time.Second); err != ErrNotReady {
		t.Fatalf("WaitRX without a front-end: %v, want ErrNotReady", err)
	}
	if _, err := d.WaitRX(3, time.Second); err == nil {
		t.Fatal("WaitRX on pair 3 of 1 did not fail")
	}
}

// BenchmarkOffer64: the RX per-frame path at small frames: batches of
// 256 64-byte frames into a 1024-entry ring on memfd memory, the driver
// reposting the buffers after each batch and asking for an interrupt per
// batch (used_event at the last used index, as NAPI re-enabling
// interrupts does). Reports ns per frame and call eventfd writes per batch.
func BenchmarkOffer64(b *testing.B) {
	for _, batch := range []int{64, 256} {
		b.Run(map[int]string{64: "batch64", 256: "batch256"}[batch], func(b *testing.B) {
			ts := startServer(b, NetConfig{})
			f := dial(b, ts.path)
			f.setup(setupOpts{size: 1024})
			frames := make([][]byte, batch)
			for i := range frames {
				frames[i] = frame(64, byte(i))
			}
			r := f.rings[0]
			for i := range 1024 {
				r.setDesc(i, f.buf(0, uint16(i)), 2048, descFWrite, 0)
			}
			heads := make([]uint16, batch)
			calls0 := ts.dev.Stats()[0].Calls
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				for j := range heads {
					heads[j] = uint16((i*batch + j) % 1024)
				}
				r.offer(heads...)
				r.setUsedEvent(r.usedIdx())
				if n, _, err := ts.dev.Offer(0, frames); n != batch {
					b.Fatal(n, err)
				}
				r.lastUsed = r.usedIdx()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/pkt")
			b.ReportMetric(float64(ts.dev.Stats()[0].Calls-calls0)/float64(b.N), "calls/batch")
		})
	}
}
