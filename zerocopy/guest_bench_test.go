package zerocopy

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/traffic"
	"github.com/xdp-hostd/xdp-hostd/vhost"
)

// BenchmarkGuestRX compares delivery into a guest's RX buffers (the test
// driver's virtqueue over memfd memory, reposting every buffer it gets):
//
//	copy      a socket over the daemon's UMEM; each frame popped, copied
//	          into a guest buffer with its header, pushed used; released
//	zerocopy  GuestRX: the kernel wrote the frame into the guest buffer;
//	          only the header and the used entry are left
//
// Frames are sent unpaced from the wire namespace into queue 1. Metrics:
// ns/pkt (wall time per frame delivered), rx-ns/pkt (the delivering
// goroutine's busy time per frame, driver reposts included), loss-%.
func BenchmarkGuestRX(b *testing.B) {
	for _, size := range []int{64, 1400} {
		for _, mode := range []string{"copy", "zerocopy"} {
			b.Run(fmt.Sprintf("%s/%d", mode, size), func(b *testing.B) { benchGuestRX(b, mode, size) })
		}
	}
}

func benchGuestRX(b *testing.B, mode string, size int) {
	topo := testnet.Topology(b, 4)
	xsks := redirectByQueue(b, topo)
	g := newTestGuest(b)
	for i := range gRingSize {
		g.postBuf(i)
	}
	var poll func() int
	var wait func()
	switch mode {
	case "zerocopy":
		rx := openGuestRX(b, topo, g, 1)
		if err := rx.Register(xsks, 1); err != nil {
			b.Fatal(err)
		}
		poll, wait = rx.Poll, func() { rx.Wait(5 * time.Millisecond) }
	case "copy":
		s := openSocket(b, topo, 4096, Options{Queue: 1, Dir: RX})
		if err := s.Register(xsks, 1); err != nil {
			b.Fatal(err)
		}
		descs := make([]Desc, 256)
		var chain vhost.Chain
		poll = func() int {
			n := s.Receive(descs)
			placed := 0
			for _, d := range descs[:n] {
				f := s.Frame(d)
				ok, err := g.vq.Pop(&chain)
				if err != nil || !ok || len(chain.Writable) == 0 || len(chain.Writable[0]) < 12+len(f) {
					continue // no buffer: dropped
				}
				w := chain.Writable[0]
				clear(w[:12])
				w[10] = 1
				copy(w[12:], f)
				g.vq.PushUsed(chain.Head, uint32(12+len(f)))
				placed++
			}
			if n > 0 {
				g.vq.PublishUsed()
				s.Release(descs[:n])
			}
			return placed
		}
		wait = func() { s.Wait(5 * time.Millisecond) }
	}
	sender, err := traffic.NewSender(topo.WireNS, topo.Wire)
	if err != nil {
		b.Fatal(err)
	}
	defer sender.Close()
	spec := traffic.FrameSpec{Dst: topo.UplinkMAC, Src: topo.WireMAC, Size: size, Tag: 1}

	var stop atomic.Bool
	done := make(chan struct{})
	var received int
	var busy time.Duration
	var first, last time.Time
	go func() {
		defer close(done)
		var used []usedElem
		for {
			t0 := time.Now()
			n := poll()
			if n == 0 {
				if stop.Load() {
					return
				}
				wait()
				continue
			}
			if received == 0 {
				first = t0
			}
			used = g.used(used[:0])
			for _, u := range used {
				g.postBuf(int(u.head))
			}
			received += n
			last = time.Now()
			busy += last.Sub(t0)
		}
	}()
	b.ResetTimer()
	if err := sender.Send(spec, 1, 0, b.N); err != nil {
		b.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	stop.Store(true)
	<-done
	b.StopTimer()
	if received == 0 {
		b.Fatal("nothing received")
	}
	b.ReportMetric(float64(last.Sub(first).Nanoseconds())/float64(received), "ns/pkt")
	b.ReportMetric(float64(busy.Nanoseconds())/float64(received), "rx-ns/pkt")
	b.ReportMetric(100*float64(b.N-received)/float64(b.N), "loss-%")
}
