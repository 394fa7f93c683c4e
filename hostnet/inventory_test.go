package hostnet_test

import (
	"errors"
	"testing"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
)

func TestInspectVeth(t *testing.T) {
	topo := testnet.Topology(t, 4)
	r := testnet.Runner(t, topo.HostNS)
	up, err := hostnet.Inspect(r, topo.Uplink)
	if err != nil {
		t.Fatal(err)
	}
	if up.RxQueues != 4 || up.TxQueues != 4 || up.MAC.String() != topo.UplinkMAC.String() {
		t.Errorf("inventory %+v", up)
	}
	// veth: native XDP with redirect and ndo_xdp_xmit, no zero-copy AF_XDP.
	f := up.XDP
	if f.Source != "netdev-netlink" || !f.Basic || !f.Redirect || !f.NDOXmit || f.XSKZeroCopy {
		t.Errorf("veth XDP features %s (%+v)", f, f)
	}
	t.Logf("veth XDP features: %s", f)
}

func TestInspectMissing(t *testing.T) {
	topo := testnet.Topology(t, 1)
	_, err := hostnet.Inspect(testnet.Runner(t, topo.HostNS), "nope0")
	if !errors.Is(err, hostnet.ErrNoSuchInterface) {
		t.Errorf("got %v, want ErrNoSuchInterface", err)
	}
}
