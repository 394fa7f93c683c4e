// Tests of the example guest programs on real traffic: each is loaded on a
// VM of a namespace topology through the same path as any guest program.
package examples_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	hostbpf "github.com/xdp-hostd/xdp-hostd/bpf"
	"github.com/xdp-hostd/xdp-hostd/guestprog"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/traffic"
)

var vmMAC = net.HardwareAddr{0x02, 0, 0, 0, 0x01, 0x01}

type rig struct {
	topo   *hostnet.Topology
	vm     *hostnet.VM
	sender *traffic.Sender
	tap    *traffic.Counter
	wire   *traffic.Counter
	ports  []*traffic.Counter // index = port number; 0 unused
}

// newRig: a VM on queue 1 running example name, with ports 1 and 2.
func newRig(t *testing.T, name string) *rig {
	t.Helper()
	topo := testnet.Topology(t, 4)
	dp, err := hostnet.Open(hostnet.Config{Uplink: topo.Uplink, NetNS: topo.HostNS})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	vm, err := dp.AddVM(hostnet.VMSpec{Name: "vm1", MAC: vmMAC, Queues: []int{1}})
	if err != nil {
		t.Fatal(err)
	}
	obj, err := hostbpf.Example(name)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := guestprog.Parse(obj, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vm.SetProgram(parsed, name); err != nil {
		t.Fatal(err)
	}
	r := &rig{topo: topo, vm: vm, ports: make([]*traffic.Counter, 3)}
	for n := uint32(1); n <= 2; n++ {
		host, wire, err := topo.AddPortPair(topo.Prefix + "p" + string(rune('0'+n)))
		if err != nil {
			t.Fatal(err)
		}
		if err := vm.AddPort(n, host); err != nil {
			t.Fatal(err)
		}
		r.ports[n] = testnet.PacketCounter(t, topo.WireNS, wire)
	}
	r.wire = testnet.PacketCounter(t, topo.WireNS, topo.Wire)
	r.tap = testnet.TapCounter(t, vm.Tap())
	r.sender = testnet.Sender(t, topo)
	return r
}

func (r *rig) frame(dst net.HardwareAddr, src string, dport uint16, tag uint16) traffic.FrameSpec {
	return traffic.FrameSpec{Dst: dst, Src: r.topo.WireMAC, SrcIP: netip.MustParseAddr(src), DstIP: netip.MustParseAddr("10.201.0.11"),
		SrcPort: 4000, DstPort: dport, Size: 90, Tag: tag}
}

func (r *rig) send(t *testing.T, spec traffic.FrameSpec, n int) {
	t.Helper()
	if err := r.sender.Send(spec, 1, 0, n); err != nil {
		t.Fatal(err)
	}
}

// got waits (at most 5 s) for want frames tagged tag on c, then a quiet
// 100 ms, and returns how many came.
func got(c *traffic.Counter, tag uint16, want uint64) uint64 {
	deadline := time.Now().Add(5 * time.Second)
	for c.Snapshot().ByTag[tag] < want && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	return c.Snapshot().ByTag[tag]
}

func verdicts(t *testing.T, vm *hostnet.VM) hostnet.Verdicts {
	t.Helper()
	v, err := vm.Verdicts()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

type macKey struct {
	Addr [6]byte
	Pad  uint16
}

func key(mac net.HardwareAddr) macKey {
	var k macKey
	copy(k.Addr[:], mac)
	return k
}

func guestMap(t *testing.T, vm *hostnet.VM, name string) *ebpf.Map {
	t.Helper()
	m, ok := vm.GuestMap(name)
	if !ok {
		t.Fatalf("guest map %s missing", name)
	}
	return m
}

func TestBridge(t *testing.T) {
	r := newRig(t, "bridge")
	const n = 100
	unknown := net.HardwareAddr{0x02, 0, 0, 0, 0x0a, 0x0a}

	// Unknown destination: flooded to every port but the ingress (uplink).
	r.send(t, r.frame(unknown, "10.201.0.2", 5000, 1), n)
	for p := 1; p <= 2; p++ {
		if g := got(r.ports[p], 1, n); g != n {
			t.Errorf("port %d got %d of %d flooded frames", p, g, n)
		}
	}
	if g := r.wire.Snapshot().ByTag[1]; g != 0 {
		t.Errorf("flood went back out of the ingress: %d frames", g)
	}

	// It learned the sender's MAC behind port 0, the uplink.
	var port uint32
	if err := guestMap(t, r.vm, "fdb").Lookup(key(r.topo.WireMAC), &port); err != nil || port != 0 {
		t.Fatalf("fdb entry for the sender: port %d, %v; want 0", port, err)
	}

	// A frame for a MAC on its own ingress segment is not forwarded.
	before := verdicts(t, r.vm)
	r.send(t, r.frame(r.topo.WireMAC, "10.201.0.2", 5000, 2), n)
	time.Sleep(200 * time.Millisecond)
	if d := verdicts(t, r.vm).Drop.Packets - before.Drop.Packets; d != n {
		t.Errorf("same-segment frames dropped: %d, want %d", d, n)
	}

	// A MAC known behind port 2 gets its frames there only.
	behind2 := net.HardwareAddr{0x02, 0, 0, 0, 0x0b, 0x0b}
	if err := guestMap(t, r.vm, "fdb").Put(key(behind2), uint32(2)); err != nil {
		t.Fatal(err)
	}
	r.send(t, r.frame(behind2, "10.201.0.2", 5000, 3), n)
	if g := got(r.ports[2], 3, n); g != n {
		t.Errorf("port 2 got %d of %d", g, n)
	}
	if g := r.ports[1].Snapshot().ByTag[3]; g != 0 {
		t.Errorf("port 1 got %d frames for a MAC behind port 2", g)
	}

	// Broadcast floods.
	r.send(t, r.frame(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, "10.201.0.2", 5000, 4), n)
	for p := 1; p <= 2; p++ {
		if g := got(r.ports[p], 4, n); g != n {
			t.Errorf("port %d got %d of %d broadcast frames", p, g, n)
		}
	}
}

func TestDDoSFilter(t *testing.T) {
	r := newRig(t, "ddos_filter")
	type prefix struct {
		Len  uint32
		Addr [4]byte
	}
	blocked := prefix{Len: 24, Addr: [4]byte{10, 66, 0, 0}}
	if err := guestMap(t, r.vm, "blocked").Put(blocked, uint64(0)); err != nil {
		t.Fatal(err)
	}
	const n = 200
	r.send(t, r.frame(vmMAC, "10.66.0.7", 80, 1), n) // blocked
	r.send(t, r.frame(vmMAC, "10.66.1.7", 80, 2), n) // next /24: allowed
	r.send(t, r.frame(vmMAC, "192.0.2.1", 80, 3), n) // allowed
	if g := got(r.tap, 3, n); g != n {
		t.Errorf("allowed source reached the VM %d of %d times", g, n)
	}
	snap := r.tap.Snapshot()
	if snap.ByTag[1] != 0 || snap.ByTag[2] != n {
		t.Errorf("tap got %v; want none from the blocked prefix, all %d from its neighbour", snap.ByTag, n)
	}
	var hits uint64
	if err := guestMap(t, r.vm, "blocked").Lookup(blocked, &hits); err != nil || hits != n {
		t.Errorf("prefix hit counter %d (%v), want %d", hits, err, n)
	}
	if v := verdicts(t, r.vm); v.Drop.Packets != n || v.Pass.Packets != 2*n {
		t.Errorf("verdicts %+v", v)
	}
}

func TestPortForward(t *testing.T) {
	r := newRig(t, "port_forward")
	if err := guestMap(t, r.vm, "forward").Put(uint16(9999), uint32(1)); err != nil {
		t.Fatal(err)
	}
	const n = 150
	r.send(t, r.frame(vmMAC, "10.201.0.2", 9999, 1), n)
	r.send(t, r.frame(vmMAC, "10.201.0.2", 80, 2), n)
	if g := got(r.ports[1], 1, n); g != n {
		t.Errorf("port 1 got %d of %d forwarded frames", g, n)
	}
	if g := got(r.tap, 2, n); g != n {
		t.Errorf("the VM got %d of %d other frames", g, n)
	}
	if g := r.tap.Snapshot().ByTag[1]; g != 0 {
		t.Errorf("the VM also got %d forwarded frames", g)
	}
	if v := verdicts(t, r.vm); v.Redirect.Packets != n || v.Pass.Packets != n {
		t.Errorf("verdicts %+v", v)
	}
}
