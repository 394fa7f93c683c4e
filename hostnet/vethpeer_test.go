package hostnet_test

import (
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/traffic"
)

// A veth uplink whose peer has neither an XDP program nor GRO on drops what
// native XDP sends into it (a guest program's XDP_TX here): RedirectProblem
// says so, and the VM's TX verdict counter says what the program did
// (nothing reached the wire). A VM's tap transmit runs in generic mode,
// through the veth's ordinary transmit, so its frames arrive all the same.
// With GRO on the peer the problem is gone; with the peer down, it says so.
func TestRedirectIntoVethPeer(t *testing.T) {
	topo := testnet.Topology(t, 2)
	wire := testnet.Runner(t, topo.WireNS)
	problem := func() string {
		t.Helper()
		p, err := hostnet.RedirectProblem(topo.HostNS, topo.Uplink)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	// The topology's wire side runs an XDP pass program: fine.
	if p := problem(); p != "" {
		t.Errorf("a peer with an XDP program: %s", p)
	}
	// Not a veth (the loopback device): nothing to say.
	if p, err := hostnet.RedirectProblem(topo.HostNS, "lo"); p != "" || err != nil {
		t.Errorf("lo: %q %v", p, err)
	}
	if _, err := hostnet.RedirectProblem(topo.HostNS, topo.Prefix+"nope"); err == nil {
		t.Error("a missing interface: no error")
	}

	err := wire.Do(func() error {
		l, err := netlink.LinkByName(topo.Wire)
		if err != nil {
			return err
		}
		return netlink.LinkSetXdpFd(l, -1)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := hostnet.SetGRO(wire, topo.Wire, false); err != nil {
		t.Fatal(err)
	}
	p := problem()
	for _, w := range []string{"its veth peer " + topo.Wire, topo.WireNS, "neither an XDP program nor GRO", "ethtool -K " + topo.Wire + " gro on"} {
		if !strings.Contains(p, w) {
			t.Errorf("no XDP, no GRO: %q does not say %q", p, w)
		}
	}

	dp := openDP(t, topo)
	vm := addVM(t, dp, "vm1", mac1, 1)
	setGuest(t, vm, "tx")
	at := testnet.PacketCounter(t, topo.WireNS, topo.Wire)
	out, err := traffic.OpenPacketSocket(topo.WireNS, topo.Wire)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { out.Close() })
	// bounce sends n frames from the wire to the VM, whose program sends
	// them back (XDP_TX), and waits for its TX verdict count to reach want.
	bounce := func(tag uint16, n int, want uint64) {
		t.Helper()
		spec := traffic.FrameSpec{Dst: mac1, Src: topo.WireMAC, Size: 80, Tag: tag}
		buf := make([]byte, spec.Size)
		for i := range n {
			if _, err := spec.Build(buf, uint32(i)); err != nil {
				t.Fatal(err)
			}
			if _, err := out.Write(buf); err != nil {
				t.Fatalf("send frame %d from the wire: %v", i, err)
			}
		}
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if v, _ := vm.Verdicts(); v.TX.Packets >= want {
				return
			}
		}
		v, _ := vm.Verdicts()
		t.Fatalf("the VM's program bounced %d frames, want %d", v.TX.Packets, want)
	}
	bounce(31, 200, 200)
	time.Sleep(200 * time.Millisecond) // anything that was to arrive has
	if got := at.Snapshot().ByTag[31]; got != 0 {
		t.Errorf("no GRO: the wire got %d of the 200 frames the VM bounced; want 0", got)
	}
	// The tap's transmit (generic mode) is not affected.
	q := vm.Tap().Queues()[0]
	if err := traffic.WriteFrames(q, traffic.FrameSpec{Dst: topo.WireMAC, Src: mac1, Size: 80, Tag: 33}, 200); err != nil {
		t.Fatal(err)
	}
	if snap := settle(t, at, 200); snap.ByTag[33] != 200 {
		t.Errorf("no GRO: the wire got %d of the 200 frames the VM's tap sent", snap.ByTag[33])
	}

	if err := hostnet.SetGRO(wire, topo.Wire, true); err != nil {
		t.Fatal(err)
	}
	if p := problem(); p != "" {
		t.Errorf("GRO on: %s", p)
	}
	if err := traffic.WriteFrames(q, traffic.FrameSpec{Dst: topo.WireMAC, Src: mac1, Size: 80, Tag: 32}, 200); err != nil {
		t.Fatal(err)
	}
	if snap := settle(t, at, 400); snap.ByTag[32] != 200 {
		t.Errorf("GRO on: the wire got %d of the 200 frames the VM's tap sent", snap.ByTag[32])
	}

	err = wire.Do(func() error {
		l, err := netlink.LinkByName(topo.Wire)
		if err != nil {
			return err
		}
		return netlink.LinkSetDown(l)
	})
	if err != nil {
		t.Fatal(err)
	}
	if p := problem(); !strings.Contains(p, "is down") {
		t.Errorf("peer down: %q", p)
	}
}
