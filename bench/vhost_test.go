package bench

import (
	"context"
	"strings"
	"testing"

	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/vmport"
)

// TestVhostZeroCopyColumn runs the zero-copy column for real (root: veth
// topology, BPF, AF_XDP over the Go sink's sealed memfd): every frame is
// accounted for from the guest socket's counters, and the port was in
// zero-copy mode. With memory that cannot be sealed the port falls back to
// copy, and the bench must fail saying so instead of measuring copy.
func TestVhostZeroCopyColumn(t *testing.T) {
	testnet.RequireRoot(t)
	opts := VhostOptions{Packets: 20000, Rates: []float64{300e3}, Modes: []string{vmport.ModeZeroCopy}, NoTestpmd: true, NoTap: true, prefix: testnet.UniquePrefix()}
	res, err := Vhost(context.Background(), opts)
	if err != nil {
		t.Fatalf("zero-copy column: %v", err)
	}
	if len(res.Points) != 1 {
		t.Fatalf("points: %+v", res.Points)
	}
	p := res.Points[0]
	a := p.Accounting
	if p.Path != pathZeroCopy || a == nil || !a.ZeroCopy || a.Unaccounted != 0 || a.Sent < 20000 || a.Delivered == 0 || a.SinkGot != a.Delivered || a.HoldDrops != 0 || a.VQDrops != 0 {
		t.Fatalf("zero-copy point %+v, accounting %+v", p, a)
	}
	t.Logf("zero-copy at 300k offered: %+v", *a)

	opts.unsealedSink, opts.prefix = true, testnet.UniquePrefix()
	if _, err := Vhost(context.Background(), opts); err == nil || !strings.Contains(err.Error(), "ZERO-COPY NOT ACTIVE") || !strings.Contains(err.Error(), "shrink") {
		t.Fatalf("a sink whose memory can shrink: want the bench to fail with the fallback reason, got %v", err)
	}
}
