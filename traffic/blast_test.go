package traffic

import (
	"runtime"
	"testing"
)

// Blast lands on the peer's RX queue of the sending CPU.
func TestBlast(t *testing.T) {
	p := newVethPair(t, 4)
	qc := attachCounter(t, p)
	frame := make([]byte, 64)
	if _, err := (FrameSpec{Dst: p.UplinkMAC, Src: p.WireMAC, Tag: 9}).Build(frame, 0); err != nil {
		t.Fatal(err)
	}
	want := make([]uint64, 4)
	const count = 200000
	for cpu := 0; cpu < min(runtime.NumCPU(), 4); cpu++ {
		res, err := Blast(BlastOptions{NetNS: p.WireNS, Ifname: p.Wire, Frame: frame, Count: count, CPU: cpu})
		if err != nil {
			t.Fatal(err)
		}
		if res.Sent != count || res.CPU != cpu || res.Elapsed <= 0 {
			t.Fatalf("result %+v", res)
		}
		t.Logf("CPU %d: %d frames in %v: %.2f Mpps, thread CPU time %v, restarts %d",
			cpu, res.Sent, res.Elapsed, res.PPS()/1e6, res.CPUTime, res.Restarts)
		if res.Restarts > 0 {
			t.Skip("a signal interrupted the run: the frame count is not exact")
		}
		want[cpu%4] += count
	}
	waitCounts(t, qc, want)

	if _, err := Blast(BlastOptions{NetNS: p.WireNS, Ifname: p.Wire, Frame: frame[:10], Count: 1, CPU: -1}); err == nil {
		t.Error("blast of a 10-byte frame succeeded")
	}
	if _, err := Blast(BlastOptions{NetNS: p.WireNS, Ifname: "nosuch0", Frame: frame, Count: 1, CPU: -1}); err == nil {
		t.Error("blast out of a missing interface succeeded")
	}
}
