package daemon

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/traffic"
)

// A VM attached to a veth uplink whose peer has neither an XDP program nor
// GRO on: the daemon logs a warning and GET /v1/vms/{vm} shows it (for
// XDP_TX and port redirects, which run in driver mode); frames the VM
// writes into its tap arrive all the same (the tap's transmit runs in
// generic mode). With GRO on the peer, the warning is gone.
// A port added on such a veth is warned about too.
func TestRedirectDropWarning(t *testing.T) {
	topo := testnet.Topology(t, 2)
	wire := testnet.Runner(t, topo.WireNS)
	detachXDP := func(ifname string) {
		t.Helper()
		err := wire.Do(func() error {
			l, err := netlink.LinkByName(ifname)
			if err != nil {
				return err
			}
			return netlink.LinkSetXdpFd(l, -1)
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := hostnet.SetGRO(wire, ifname, false); err != nil {
			t.Fatal(err)
		}
	}
	detachXDP(topo.Wire)
	var logs syncBuf
	d, sock := startServing(t, &Config{Uplinks: []UplinkConfig{{Name: topo.Uplink, NetNS: topo.HostNS}}}, slog.New(slog.NewTextHandler(&logs, nil)))
	show := func() VMStatus {
		t.Helper()
		code, body := rawRequest(t, sock, "GET /v1/vms/vm1 HTTP/1.1\r\nHost: xdp-hostd\r\nConnection: close\r\n\r\n")
		var vs VMStatus
		if err := json.Unmarshal([]byte(body), &vs); code != 200 || err != nil {
			t.Fatalf("vm show: %d %s %v", code, body, err)
		}
		return vs
	}
	if code, body := rawRequest(t, sock, post("/v1/vms", "application/json", fmt.Sprintf(`{"uplink": %q, "vm": {"name": "vm1", "mac": "02:00:00:00:00:01"}}`, topo.Uplink))); code != 201 {
		t.Fatalf("vm add: %d %s", code, body)
	}
	want := "uplink " + topo.Uplink + ": its veth peer " + topo.Wire
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), want) {
		t.Errorf("no warning logged saying %q:\n%s", want, logs.String())
	}
	vs := show()
	if len(vs.Warnings) != 1 || !strings.Contains(vs.Warnings[0], want) || !strings.Contains(vs.Warnings[0], "GRO") {
		t.Errorf("vm show warnings %q, want one saying %q", vs.Warnings, want)
	}

	vm, _ := d.VM("vm1")
	at := testnet.PacketCounter(t, topo.WireNS, topo.Wire)
	send := func(tag uint16, n int) VMStatus {
		t.Helper()
		before := show().TX.Redirected.Packets
		if err := traffic.WriteFrames(vm.Tap().Queues()[0], traffic.FrameSpec{Dst: topo.WireMAC, Src: vm.MAC(), Size: 80, Tag: tag}, n); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if vs := show(); vs.TX.Redirected.Packets-before >= uint64(n) {
				break
			}
		}
		time.Sleep(200 * time.Millisecond) // what was to arrive has
		return show()
	}
	vs = send(41, 100)
	if got := at.Snapshot().ByTag[41]; got != 100 || vs.TX.Redirected.Packets != 100 {
		t.Errorf("no GRO: %d arrived, %d counted redirected; want 100 and 100", got, vs.TX.Redirected.Packets)
	}
	raw, _ := json.Marshal(vs.TX)
	if strings.Contains(string(raw), `"sent"`) {
		t.Errorf("the tap transmit counters still say sent: %s", raw)
	}

	if err := hostnet.SetGRO(wire, topo.Wire, true); err != nil {
		t.Fatal(err)
	}
	if vs := show(); len(vs.Warnings) != 0 {
		t.Errorf("GRO on, still warned: %q", vs.Warnings)
	}
	vs = send(42, 100)
	if got := at.Snapshot().ByTag[42]; got != 100 || vs.TX.Redirected.Packets != 200 {
		t.Errorf("GRO on: %d arrived, %d counted redirected in all; want 100 and 200", got, vs.TX.Redirected.Packets)
	}

	// A port on a veth whose peer drops XDP frames is warned about as well.
	p1, w1, err := topo.AddPortPair(topo.Prefix + "p1")
	if err != nil {
		t.Fatal(err)
	}
	detachXDP(w1)
	if _, err := d.AddPort("vm1", 1, p1, false); err != nil {
		t.Fatal(err)
	}
	if vs := show(); len(vs.Warnings) != 1 || !strings.Contains(vs.Warnings[0], "port 1 ("+p1+"): its veth peer "+w1) {
		t.Errorf("port on a veth without GRO: warnings %q", vs.Warnings)
	}
	if err := d.RemovePort("vm1", 1); err != nil {
		t.Fatal(err)
	}
	if vs := show(); len(vs.Warnings) != 0 {
		t.Errorf("port removed, still warned: %q", vs.Warnings)
	}
}
