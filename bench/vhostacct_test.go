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
