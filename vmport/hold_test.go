package vmport_test

import (
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/traffic"
)

// TestHoldWaitsForKick: frames the guest has no RX buffers for are held,
// and the receive thread waits for the guest's kick, not in a sleep: it
// asks for the kick (avail_event at the guest's next buffer), and buffers
// the guest then posts (kicking, as asked) get the held frames at once.
// On the old code (a 200 µs sleep per round) avail_event stays where the
// guest first left it.
func TestHoldWaitsForKick(t *testing.T) {
	topo, rigs := setup(t, 1)
	r := rigs[0]
	s := testnet.Sender(t, topo)
	fe := connect(t, r)
	seq := uint32(0)
	send := func(n int) {
		t.Helper()
		if err := s.Send(traffic.FrameSpec{Dst: r.mac, Src: topo.WireMAC, Size: 128, Tag: uint16(r.q)}, r.q, seq, n); err != nil {
			t.Fatal(err)
		}
		seq += uint32(n)
	}
	// Traffic moves the guest's avail index past 0.
	fe.PostRX(8)
	send(8)
	if got := receiveN(t, fe, r.mac, 8); got != 8 {
		t.Fatalf("received %d of 8 frames", got)
	}
	// No buffers: 16 frames held, the thread asks for a kick at the next one.
	send(16)
	waitUntil(t, "the receive thread to ask for the guest's kick", func() bool { return fe.AvailEvent(0) == 8 })
	start := time.Now()
	fe.PostRX(16)
	if got := receiveN(t, fe, r.mac, 16); got != 16 {
		t.Fatalf("received %d of 16 held frames", got)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("held frames took %v after the kick", d)
	}
	if st := r.port.Stats(); st.RXDropped != 0 {
		t.Errorf("%d frames dropped while held", st.RXDropped)
	}
}
