package bench

import (
	"strings"
	"testing"
)

// TestAccountAddsUp: every frame in one column gives a clean check; a
// frame missing from the counters, or a sink that disagrees with the port,
// fails loudly.
func TestAccountAddsUp(t *testing.T) {
	a := snapshot{upRX: 50, toHost: 1, wireTXDrop: 5, fillEmpty: 10, ringFull: 1, portDropped: 7, vqDrop: 2, delivered: 100, flooded: 3, notPassed: 4}
	b := snapshot{upRX: 1082, toHost: 3, wireTXDrop: 6, fillEmpty: 31, ringFull: 2, invalid: 1, xskDrop: 21, portDropped: 12, vqDrop: 3, delivered: 1100, flooded: 5, notPassed: 6}
	// Sent: 1032 on the uplink + 1 lost on the wire = 1033 = 1 wire
	// + 2 to the host + 2 not passed + 21 rx_dropped (fill ring empty; the kernel's
	// event count, 21, is not summed) + 1 full + 1 invalid
	// + 4 hold (5 port drops less 1 virtqueue) + 1 virtqueue + 1000.
	acc := account(1031, a, b, 1002) // a restart: the source is short
	acc.SourceRestarts = 1
	if err := acc.check(); err != nil {
		t.Fatalf("a complete account failed: %v", err)
	}
	if acc.HoldDrops != 4 || acc.VQDrops != 1 || acc.Delivered != 1000 || acc.SinkGot != 1000 {
		t.Fatalf("columns: %+v", acc)
	}
	if err := account(1031, a, b, 1002).check(); err == nil || !strings.Contains(err.Error(), "SOURCE DISAGREES") {
		t.Fatalf("the source short without a restart: %v", err)
	}
	b.upRX++
	if err := account(1034, a, b, 1002).check(); err == nil || !strings.Contains(err.Error(), "UNACCOUNTED") {
		t.Fatalf("one frame in no column: %v", err)
	}
	b.upRX--
	if err := account(1033, a, b, 1001).check(); err == nil || !strings.Contains(err.Error(), "SINK DISAGREES") {
		t.Fatalf("the sink one short: %v", err)
	}
	lag := account(1033, a, b, 1001)
	lag.SinkLags = true
	if err := lag.check(); err != nil {
		t.Fatalf("testpmd's lagging count one short: %v", err)
	}
}

// TestAccountZeroCopy: in zero-copy mode the kernel's drops of the guest
// socket (no guest buffer posted, frame larger than one) are a column of
// sent; refused guest buffers drop no frame but come back to the sink as
// empty used entries, so the sink's count less them must equal delivered.
func TestAccountZeroCopy(t *testing.T) {
	a := snapshot{zeroCopy: true, upRX: 10, xskDrop: 3, fillEmpty: 40, refused: 1, starved: 2, delivered: 7}
	b := snapshot{zeroCopy: true, upRX: 1010, xskDrop: 53, fillEmpty: 140, ringFull: 4, refused: 6, starved: 9, delivered: 953}
	// 1000 sent = 50 no guest buffer + 4 RX ring full + 946 delivered; the
	// sink saw 946 frames and 5 refused buffers.
	acc := account(1000, a, b, 951)
	if err := acc.check(); err != nil {
		t.Fatalf("a complete zero-copy account failed: %v", err)
	}
	if !acc.ZeroCopy || acc.XSKFillEmpty != 50 || acc.XSKFillEmptyEvents != 100 || acc.RefusedBuffers != 5 || acc.Starved != 7 || acc.SinkGot != 946 || acc.HoldDrops != 0 {
		t.Fatalf("columns: %+v", acc)
	}
	// Refused buffers are not frames: counting them as drops would not add up.
	b.xskDrop -= 5
	if err := account(1000, a, b, 951).check(); err == nil || !strings.Contains(err.Error(), "UNACCOUNTED") {
		t.Fatalf("five kernel drops missing: %v", err)
	}
	b.xskDrop += 5
	// The sink counting one more entry than delivered plus refused.
	if err := account(1000, a, b, 952).check(); err == nil || !strings.Contains(err.Error(), "SINK DISAGREES") {
		t.Fatalf("the sink one over: %v", err)
	}
}

// TestAccountRatios: the zero-copy/copy ratios of delivered pps and CPU
// per frame are made for each rate both paths measured.
func TestAccountRatios(t *testing.T) {
	res := &VhostResult{Points: []VhostPoint{
		{Path: pathCopy, OfferedPPS: 1e6, DeliveredPPS: 800e3, ForwarderNsPerFrame: 400},
		{Path: pathCopy, OfferedPPS: 0, DeliveredPPS: 900e3, ForwarderNsPerFrame: 380},
		{Path: pathZeroCopy, OfferedPPS: 1e6, DeliveredPPS: 1e6, ForwarderNsPerFrame: 100},
	}}
	r := vhostRatios(res, []float64{1e6, 0})
	if len(r) != 2 || !strings.Contains(r[0].Name, "zero-copy / copy") || !strings.HasPrefix(r[0].Value, "1.25x") ||
		!strings.Contains(r[1].Name, "CPU per frame") || !strings.HasPrefix(r[1].Value, "0.250x") {
		t.Fatalf("ratios: %+v", r)
	}
}
