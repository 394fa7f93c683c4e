package bench

import (
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/vmport"
)

// Accounting says where every frame the source sent at one rate went on
// the xdp-hostd path. The columns from WireLost to Delivered add up to
// Sent; Vhost fails when they do not.
//
// In zero-copy mode (ZeroCopy) the AF_XDP columns are the guest socket's
// (zerocopy.GuestRXStats from the kernel): XSKFillEmpty is then frames
// that found no guest buffer because the guest posted too few, or were
// longer than one guest buffer; frames never wait in a hold queue or meet
// the virtqueue (the kernel writes them into buffers already taken from
// it), so HoldDrops and VQDrops stay 0 unless broadcasts were flooded.
// Buffers the port refused (RefusedBuffers) drop no frame: they go back to
// the guest as used entries of length 0, which the sink counts, so they
// are taken off its count.
type Accounting struct {
	ZeroCopy bool `json:"zero_copy,omitempty"`
	// Sent is what the source put out by the kernel's count: the uplink's
	// RX packets and the wire's TX drops. (The source's own count,
	// SourceSent, is short when a signal restarted a live-frames run.)
	Sent       uint64 `json:"sent"`
	SourceSent uint64 `json:"source_sent"`
	// ToHost are the uplink's frames that were not the VM's (the host's
	// own traffic on the veth: IPv6 neighbour discovery, say).
	ToHost uint64 `json:"to_host"`
	// WireLost are the wire veth's TX drops: frames its XDP transmit could
	// not put in the uplink's ring. (The uplink's RX drops count these
	// again, and the AF_XDP redirects that failed.)
	WireLost uint64 `json:"wire_lost"`
	// The VM program's verdicts other than PASS (drop, aborted, invalid,
	// TX, redirect, undelivered, spoofed, no port).
	NotPassed uint64 `json:"not_passed"`
	// AF_XDP socket drops (XDP_STATISTICS). XSKFillEmpty is rx_dropped:
	// frames the kernel found no fill-ring buffer for (or too large for
	// one: none here). The kernel's own fill-ring-empty count
	// (XSKFillEmptyEvents) is shown but not summed: it also counts checks
	// that dropped nothing (xp_can_alloc). XSKRingFull: the RX ring was
	// full; XSKInvalid: invalid descriptors.
	XSKFillEmpty       uint64 `json:"xsk_fill_ring_empty"`
	XSKFillEmptyEvents uint64 `json:"xsk_fill_ring_empty_events"`
	XSKRingFull        uint64 `json:"xsk_rx_ring_full"`
	XSKInvalid         uint64 `json:"xsk_invalid"`
	HoldDrops          uint64 `json:"hold_drops"`      // the guest had no RX buffers within the hold limit
	VQDrops            uint64 `json:"virtqueue_drops"` // the virtqueue refused them (too large, broken)
	Delivered          uint64 `json:"delivered"`       // placed in the guest's RX ring
	// Unaccounted is Sent less every column above: 0, or the benchmark
	// fails.
	Unaccounted int64 `json:"unaccounted"`
	// SinkGot is the sink's own count, read after it settled, less the
	// broadcast and multicast copies the port flooded to it: Delivered,
	// or the benchmark fails.
	SinkGot uint64 `json:"sink_got"`
	// SinkLags: the sink is testpmd, whose printed counters lag (its stats
	// thread shares a CPU with two polling lcores), so SinkGot is a floor
	// and not checked.
	SinkLags bool   `json:"sink_lags,omitempty"`
	Flooded  uint64 `json:"flooded"`
	// RefusedBuffers are guest buffers the zero-copy port returned unused
	// (bad chains, too small, outside guest memory, overlapping), and
	// Starved the polls that found the guest had posted none: not summed.
	RefusedBuffers uint64 `json:"refused_buffers,omitempty"`
	Starved        uint64 `json:"starved_polls,omitempty"`
	// WireTX and UplinkRX are the veths' packet counters (for reference).
	WireTX   uint64 `json:"wire_tx_packets"`
	UplinkRX uint64 `json:"uplink_rx_packets"`
	// SourceRestarts are live-frames runs a signal interrupted and the
	// source ran again: each sent some frames twice.
	SourceRestarts int `json:"source_restarts"`
}

// snapshot is the raw counters of the xdp-hostd path at one moment.
type snapshot struct {
	wireTXDrop, wireTX, upRX, toHost        uint64
	pass, notPassed                         uint64
	fillEmpty, ringFull, invalid, xskDrop   uint64
	portDropped, delivered, flooded, vqDrop uint64
	zeroCopy                                bool
	refused, starved                        uint64
}

// takeSnapshot reads the counters; with zeroCopy the AF_XDP ones are the
// guest sockets' (the copy sockets are closed while the guest's memory is
// the UMEM).
func takeSnapshot(topo *hostnet.Topology, dp *hostnet.Dataplane, vm *hostnet.VM, port *vmport.Port, zeroCopy bool) (snapshot, error) {
	s := snapshot{zeroCopy: zeroCopy}
	ds, err := dp.Stats()
	if err != nil {
		return s, err
	}
	s.toHost = ds.Host.Packets + ds.NoProgram.Packets
	if s.wireTXDrop, _, s.wireTX, _, err = linkCounts(topo.WireNS, topo.Wire); err != nil {
		return s, err
	}
	if _, _, _, s.upRX, err = linkCounts(topo.HostNS, topo.Uplink); err != nil {
		return s, err
	}
	v, err := vm.Verdicts()
	if err != nil {
		return s, err
	}
	s.pass = v.Pass.Packets
	for _, c := range []hostnet.Count{v.Aborted, v.Drop, v.TX, v.Redirect, v.Invalid, v.Undelivered, v.Spoofed, v.NoPort} {
		s.notPassed += c.Packets
	}
	if zeroCopy {
		zs := port.ZeroCopy().Stats
		s.fillEmpty, s.ringFull, s.invalid, s.xskDrop = zs.FillRingEmpty, zs.RXRingFull, zs.InvalidFillDesc, zs.KernelDropped
		s.refused = zs.RefusedChain + zs.RefusedTiny + zs.RefusedOutside + zs.RefusedOverlap
		s.starved = zs.Starved
	} else {
		socks, err := port.SocketStats()
		if err != nil {
			return s, err
		}
		for _, st := range socks {
			s.fillEmpty += st.RXFillRingEmpty
			s.ringFull += st.RXRingFull
			s.invalid += st.RXInvalidDescs
			s.xskDrop += st.RXDropped
		}
	}
	ps := port.Stats()
	s.portDropped, s.delivered, s.flooded = ps.RXDropped, ps.RXDelivered, ps.RXFlooded
	for i, q := range port.Device().Stats() {
		if i%2 == 0 {
			s.vqDrop += q.Drops
		}
	}
	return s, nil
}

// account fills in where the sent frames went between two snapshots.
func account(sourceSent uint64, a, b snapshot, sinkGot uint64) Accounting {
	acc := Accounting{
		Sent:               (b.upRX - a.upRX) + (b.wireTXDrop - a.wireTXDrop),
		SourceSent:         sourceSent,
		ToHost:             b.toHost - a.toHost,
		WireLost:           b.wireTXDrop - a.wireTXDrop,
		WireTX:             b.wireTX - a.wireTX,
		UplinkRX:           b.upRX - a.upRX,
		NotPassed:          b.notPassed - a.notPassed,
		XSKFillEmpty:       b.xskDrop - a.xskDrop,
		XSKFillEmptyEvents: b.fillEmpty - a.fillEmpty,
		XSKRingFull:        b.ringFull - a.ringFull,
		XSKInvalid:         b.invalid - a.invalid,
		VQDrops:            b.vqDrop - a.vqDrop,
		Delivered:          b.delivered - a.delivered,
		Flooded:            b.flooded - a.flooded,
		ZeroCopy:           b.zeroCopy,
		RefusedBuffers:     b.refused - a.refused,
		Starved:            b.starved - a.starved,
	}
	// The port counts the virtqueue's refusals among its drops too.
	acc.HoldDrops = (b.portDropped - a.portDropped) - acc.VQDrops
	// The sink counts every used entry: flooded copies and refused
	// buffers (length 0) are not frames the source sent.
	acc.SinkGot = sinkGot - acc.Flooded - acc.RefusedBuffers
	acc.Unaccounted = int64(acc.Sent) - int64(acc.WireLost+acc.ToHost+acc.NotPassed+acc.XSKFillEmpty+acc.XSKRingFull+acc.XSKInvalid+acc.HoldDrops+acc.VQDrops+acc.Delivered)
	return acc
}

// check fails unless the columns add up to what was sent and the sink got
// what was delivered.
func (a Accounting) check() error {
	if a.Unaccounted != 0 {
		return fmt.Errorf("FRAMES UNACCOUNTED FOR: %d of %d sent are in no column (%+v)", a.Unaccounted, a.Sent, a)
	}
	if a.SourceRestarts == 0 && a.SourceSent != a.Sent {
		return fmt.Errorf("THE SOURCE DISAGREES: it sent %d frames, the wire and uplink counted %d (%+v)", a.SourceSent, a.Sent, a)
	}
	if a.SinkGot != a.Delivered && !(a.SinkLags && a.SinkGot < a.Delivered) {
		return fmt.Errorf("THE SINK DISAGREES: it counted %d frames, the port delivered %d (%+v)", a.SinkGot, a.Delivered, a)
	}
	return nil
}

// linkCounts reads an interface's drop and packet counters in a namespace.
func linkCounts(ns, ifname string) (txDrop, rxDrop, txPkts, rxPkts uint64, err error) {
	r, err := hostnet.NewNSRunner(ns)
	if err != nil {
		return 0, 0, 0, 0, err
	}
	defer r.Close()
	err = r.Do(func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return fmt.Errorf("counters of %s: %w", ifname, err)
		}
		if st := l.Attrs().Statistics; st != nil {
			txDrop, rxDrop, txPkts, rxPkts = st.TxDropped, st.RxDropped, st.TxPackets, st.RxPackets
		}
		return nil
	})
	return txDrop, rxDrop, txPkts, rxPkts, err
}
