package zerocopy

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/traffic"
)

// BenchmarkRXCopy measures the receive path of copy mode: frames sent (as
// fast as traffic.Sender goes, unpaced) into queue 1 of a veth, redirected
// into a socket, each copied out of the UMEM (as into a guest's RX buffer)
// and released in batches. It reports:
//
//	ns/pkt       wall time per frame received
//	rx-ns/pkt    the reader's busy time per frame (Receive, copy, Release;
//	             not Wait)
//	loss-%       frames sent and not received (see TestIntegrationRXQueues
//	             on why unpaced bursts can lose frames on these machines)
//
// Run with -benchtime=200000x or so; one socket, 2048-entry rings.
func BenchmarkRXCopy(b *testing.B) {
	topo := testnet.Topology(b, 4)
	xsks := redirectByQueue(b, topo)
	s := openSocket(b, topo, 4096, Options{Queue: 1, Dir: RX})
	if err := s.Register(xsks, 1); err != nil {
		b.Fatal(err)
	}
	sender, err := traffic.NewSender(topo.WireNS, topo.Wire)
	if err != nil {
		b.Fatal(err)
	}
	defer sender.Close()
	spec := traffic.FrameSpec{Dst: topo.UplinkMAC, Src: topo.WireMAC, Size: 64, Tag: 1}

	var stop atomic.Bool
	done := make(chan struct{})
	var received int
	var busy time.Duration
	var first, last time.Time
	go func() {
		defer close(done)
		descs := make([]Desc, 256)
		dst := make([]byte, 256*2048)
		for {
			n := s.Receive(descs)
			if n == 0 {
				if stop.Load() {
					return
				}
				s.Wait(5 * time.Millisecond)
				continue
			}
			t0 := time.Now()
			if received == 0 {
				first = t0
			}
			for i, d := range descs[:n] {
				copy(dst[i*2048:], s.Frame(d))
			}
			s.Release(descs[:n])
			received += n
			last = time.Now()
			busy += last.Sub(t0)
		}
	}()
	b.ResetTimer()
	if err := sender.Send(spec, 1, 0, b.N); err != nil {
		b.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // let the reader drain
	stop.Store(true)
	<-done
	b.StopTimer()
	if received == 0 {
		b.Fatal("nothing received")
	}
	st, _ := s.Stats()
	b.ReportMetric(float64(last.Sub(first).Nanoseconds())/float64(received), "ns/pkt")
	b.ReportMetric(float64(busy.Nanoseconds())/float64(received), "rx-ns/pkt")
	b.ReportMetric(100*float64(b.N-received)/float64(b.N), "loss-%")
	b.Logf("N=%d received %d, stats %+v", b.N, received, st)
}

// BenchmarkTXCopy measures Transmit in copy mode: 64-byte frames from a
// socket on the uplink into the wire side, in batches of 64, completions
// recycled through a 512-frame UMEM. ns/pkt is wall time per completed frame.
func BenchmarkTXCopy(b *testing.B) {
	topo := testnet.Topology(b, 4)
	s := openSocket(b, topo, 512, Options{Queue: 0, Dir: TX, RingSize: 256})
	spec := traffic.FrameSpec{Dst: topo.WireMAC, Src: topo.UplinkMAC, Size: 64, Tag: 2}
	frames := make([][]byte, 64)
	for i := range frames {
		frames[i] = make([]byte, 64)
		if _, err := spec.Build(frames[i], uint32(i)); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	start := time.Now()
	sent := 0
	for sent < b.N {
		n, err := s.Transmit(frames[:min(64, b.N-sent)])
		if err != nil {
			b.Fatal(err)
		}
		sent += n
		if n == 0 {
			if err := s.Wait(time.Millisecond); err != nil {
				b.Fatal(err)
			}
		}
	}
	for s.Outstanding() > 0 && time.Since(start) < 10*time.Second {
		s.Wait(time.Millisecond)
		s.Complete()
	}
	el := time.Since(start)
	b.StopTimer()
	st, _ := s.Stats()
	b.ReportMetric(float64(el.Nanoseconds())/float64(b.N), "ns/pkt")
	b.ReportMetric(float64(st.Kicks)/float64(b.N)*64, "kicks/64pkt")
	b.Logf("N=%d stats %+v", b.N, st)
}
