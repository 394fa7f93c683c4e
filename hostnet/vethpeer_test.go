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
// a VM's tap transmit redirects into it: RedirectProblem says so, and the
// VM's counter says "redirected", which is what happened (nothing reached
// the wire). With GRO on the peer, the same frames arrive and the problem
// is gone; with the peer down, it says so.
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
	at := testnet.PacketCounter(t, topo.WireNS, topo.Wire)
	q := vm.Tap().Queues()[0]
	if err := traffic.WriteFrames(q, traffic.FrameSpec{Dst: topo.WireMAC, Src: mac1, Size: 80, Tag: 31}, 200); err != nil {
		t.Fatal(err)
	}
	st := waitRedirected(t, vm, 200)
	time.Sleep(200 * time.Millisecond) // anything that was to arrive has
	if got := at.Snapshot().ByTag[31]; got != 0 || st.Redirected.Packets != 200 {
		t.Errorf("no GRO: the wire got %d, the VM's counter says %d redirected; want 0 and 200", got, st.Redirected.Packets)
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
	snap := settle(t, at, 200)
	if st := waitRedirected(t, vm, 400); snap.ByTag[32] != 200 || st.Redirected.Packets != 400 {
		t.Errorf("GRO on: the wire got %d, redirected %d in all; want 200 and 400", snap.ByTag[32], st.Redirected.Packets)
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

// waitRedirected waits (at most 5 s) for the VM's redirected counter to
// reach n and returns the counters.
func waitRedirected(t *testing.T, vm *hostnet.VM, n uint64) hostnet.TXStats {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := vm.TXStats()
		if err != nil {
			t.Fatal(err)
		}
		if st.Redirected.Packets >= n || time.Now().After(deadline) {
			return st
		}
		time.Sleep(10 * time.Millisecond)
	}
}
