package hostnet_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
)

// xdpPass loads a program that passes every packet.
func xdpPass(t *testing.T) *ebpf.Program {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "pass",
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func TestInspectVeth(t *testing.T) {
	host, wire := testnet.NewNetNS(t), testnet.NewNetNS(t)
	up0, peer := testnet.NewVethPair(t, host, "", wire, "", 4)
	mac := testnet.TestMAC(1)
	testnet.SetMAC(t, host, up0.Attrs().Name, mac)
	r := testnet.Runner(t, host.Path())

	up, err := hostnet.Inspect(r, up0.Attrs().Name)
	if err != nil {
		t.Fatal(err)
	}
	if up.Name != up0.Attrs().Name || up.Index != up0.Attrs().Index || up.RxQueues != 4 || up.TxQueues != 4 || up.MAC.String() != mac.String() {
		t.Errorf("inventory %+v", up)
	}
	if up.Attached.Present() {
		t.Errorf("fresh veth has XDP attached: %+v", up.Attached)
	}
	// veth: native XDP with redirect and multi-buffer receive, no
	// zero-copy AF_XDP, no offload. It can be a redirect target
	// (ndo_xdp_xmit) only while its peer has XDP (or GRO) on.
	f := up.XDP
	t.Logf("veth XDP features, peer without XDP: %s (mask %#x, zc max segs %d)", f, f.Mask, f.ZCMaxSegs)
	if f.Source != "netdev-netlink" || !f.Basic || !f.Redirect || !f.RxSG || f.XSKZeroCopy || f.HWOffload {
		t.Errorf("veth XDP features %s (%+v)", f, f)
	}
	if f.NDOXmit {
		t.Errorf("veth reports ndo_xmit with no XDP on its peer: %s", f)
	}

	// XDP on the peer makes this end a redirect target.
	prog := xdpPass(t)
	if err := wire.Do(func() error { return netlink.LinkSetXdpFdWithFlags(peer, prog.FD(), 1<<2 /* XDP_FLAGS_DRV_MODE */) }); err != nil {
		t.Fatal(err)
	}
	if up, err = hostnet.Inspect(r, up0.Attrs().Name); err != nil {
		t.Fatal(err)
	}
	t.Logf("veth XDP features, peer with XDP: %s (mask %#x)", up.XDP, up.XDP.Mask)
	if !up.XDP.NDOXmit || !up.XDP.NDOXmitSG {
		t.Errorf("veth features with XDP on its peer: %s", up.XDP)
	}
}

func TestInspectMissing(t *testing.T) {
	_, err := hostnet.Inspect(nil, "eth9nope")
	if !errors.Is(err, hostnet.ErrNoSuchInterface) {
		t.Fatalf("got %v, want ErrNoSuchInterface", err)
	}
	want := `uplink "eth9nope": no such network interface in this network namespace (list them with 'ip link')`
	if err.Error() != want {
		t.Errorf("got  %q\nwant %q", err, want)
	}

	ns := testnet.NewNetNS(t)
	_, err = hostnet.Inspect(testnet.Runner(t, ns.Path()), "eth9")
	if !errors.Is(err, hostnet.ErrNoSuchInterface) || !strings.Contains(err.Error(), "ip -n "+ns.Name()+" link") {
		t.Errorf("got %v, want ErrNoSuchInterface naming 'ip -n %s link'", err, ns.Name())
	}
	if _, err := hostnet.AttachedXDPOf(testnet.Runner(t, ns.Path()), "eth9"); !errors.Is(err, hostnet.ErrNoSuchInterface) {
		t.Errorf("AttachedXDPOf: got %v, want ErrNoSuchInterface", err)
	}
}

func TestInspectAttachedXDP(t *testing.T) {
	ns := testnet.NewNetNS(t)
	a, b := testnet.NewVethPair(t, ns, "", ns, "", 1)
	r := testnet.Runner(t, ns.Path())
	prog := xdpPass(t)
	info, err := prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	progID, _ := info.ID()

	// a: a bpf_link in driver mode, attached from inside the namespace
	// (the kernel resolves the ifindex there).
	var l link.Link
	if err := ns.Do(func() (err error) {
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: a.Attrs().Index, Flags: link.XDPDriverMode})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	li, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	up, err := hostnet.Inspect(r, a.Attrs().Name)
	if err != nil {
		t.Fatal(err)
	}
	got := up.Attached
	if got.Mode != hostnet.XDPModeDriver || uint32(got.ProgID) != uint32(progID) || got.LinkID != uint32(li.ID) || got.LinkErr != "" {
		t.Errorf("attached %+v, want driver mode, prog %d, link %d", got, progID, li.ID)
	}
	if h := got.RemoveHint(a.Attrs().Name); !strings.Contains(h, fmt.Sprintf("bpf_link id %d", li.ID)) {
		t.Errorf("hint %q", h)
	}

	// b: through netlink in generic mode, no bpf_link.
	if err := ns.Do(func() error { return netlink.LinkSetXdpFdWithFlags(b, prog.FD(), 1<<1 /* XDP_FLAGS_SKB_MODE */) }); err != nil {
		t.Fatal(err)
	}
	got, err = hostnet.AttachedXDPOf(r, b.Attrs().Name)
	if err != nil {
		t.Fatal(err)
	}
	if got.Mode != hostnet.XDPModeGeneric || uint32(got.ProgID) != uint32(progID) || got.LinkID != 0 || got.LinkErr != "" {
		t.Errorf("attached %+v, want generic mode, prog %d, no link", got, progID)
	}
	want := "remove it with: ip link set dev " + b.Attrs().Name + " xdpgeneric off"
	if h := got.RemoveHint(b.Attrs().Name); h != want {
		t.Errorf("hint %q, want %q", h, want)
	}
	if id, err := hostnet.XDPLinkHolding(b.Attrs().Index, got.ProgID); err != nil || id != 0 {
		t.Errorf("XDPLinkHolding(netlink-attached) = %d, %v", id, err)
	}

	// Closing the link detaches the program.
	l.Close()
	if got, err = hostnet.AttachedXDPOf(r, a.Attrs().Name); err != nil || got.Present() {
		t.Errorf("after closing the link: %+v, %v", got, err)
	}
}

// TestSteeringOnVeth: veth has no RX flow classification, so MAC steering
// and the ntuple query fail with ErrNotSupported and say what that means.
// (It lives here rather than in ethtool_test.go, which is an internal test
// and cannot import testnet.)
func TestSteeringOnVeth(t *testing.T) {
	ns := testnet.NewNetNS(t)
	up, _ := testnet.NewVethPair(t, ns, "", ns, "", 2)
	name := up.Attrs().Name
	r := testnet.Runner(t, ns.Path())
	mac := testnet.TestMAC(5)

	var err error
	if e := ns.Do(func() error { _, err = hostnet.SteerMAC(name, mac, 1); return nil }); e != nil {
		t.Fatal(e)
	}
	if !errors.Is(err, hostnet.ErrNotSupported) {
		t.Fatalf("SteerMAC on veth: got %v, want ErrNotSupported", err)
	}
	want := fmt.Sprintf("uplink %s has no ntuple flow steering (ETHTOOL_SRXCLSRLINS: operation not supported): traffic for %s reaches queue 1 only if something else steers it", name, mac)
	if !strings.Contains(err.Error(), want) {
		t.Errorf("SteerMAC error %q\nshould contain %q", err, want)
	}
	t.Logf("SteerMAC on veth: %v", err)

	_, err = hostnet.Ntuple(r, name)
	if !errors.Is(err, hostnet.ErrNotSupported) || !strings.Contains(err.Error(), "ETHTOOL_GRXCLSRLCNT") {
		t.Errorf("Ntuple on veth: got %v, want ErrNotSupported from ETHTOOL_GRXCLSRLCNT", err)
	}
	if _, err := hostnet.Ntuple(r, "nothere0"); err == nil || errors.Is(err, hostnet.ErrNotSupported) {
		t.Errorf("Ntuple on a missing device: %v", err)
	}
}
