package vmport_test

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/guestprog"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/testpmd"
	"github.com/xdp-hostd/xdp-hostd/traffic"
	"github.com/xdp-hostd/xdp-hostd/vmport"
)

type vmRig struct {
	vm   *hostnet.VM
	port *vmport.Port
	sock string
	mac  net.HardwareAddr
	q    int
}

func setup(t *testing.T, n int) (*hostnet.Topology, []*vmRig) {
	t.Helper()
	topo := testnet.Topology(t, 4)
	dp, err := hostnet.Open(hostnet.Config{Uplink: topo.Uplink, NetNS: topo.HostNS})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	var rigs []*vmRig
	for i := 0; i < n; i++ {
		r := &vmRig{mac: net.HardwareAddr{2, 0, 0, 0, 7, byte(i + 1)}, q: i + 1, sock: filepath.Join(t.TempDir(), "vhost.sock")}
		r.vm, err = dp.AddVM(hostnet.VMSpec{Name: fmt.Sprintf("vm%d", i+1), MAC: r.mac, Queues: []int{r.q}, Delivery: guestprog.DeliverXSK})
		if err != nil {
			t.Fatal(err)
		}
		r.port, err = vmport.Open(vmport.Config{VM: r.vm, Socket: r.sock, NetNS: topo.HostNS})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.port.Close() })
		rigs = append(rigs, r)
	}
	return topo, rigs
}

// startPMD runs testpmd as the VM's virtio front-end and waits (30 s at
// most) until its queues are up.
func startPMD(t *testing.T, r *vmRig, mode, mac, peer string) *testpmd.Proc {
	t.Helper()
	testpmd.Require(t)
	p, err := testpmd.Start(testpmd.Options{
		Vdevs: []string{fmt.Sprintf("net_virtio_user0,path=%s,queues=1,mac=%s", r.sock, mac)},
		Mode:  mode, EthPeer: peer, Prefix: fmt.Sprintf("xhvp%d%s", r.q, mode),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("started %v", p.Args)
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("testpmd output:\n%s", p.Output())
		}
	})
	// Ready once the device's queues are up and testpmd forwards (its first
	// periodic report): before that its RX ring may have no buffers yet.
	for deadline := time.Now().Add(30 * time.Second); !r.port.Device().Ready(0) || !strings.Contains(p.Output(), "NIC statistics"); {
		if time.Now().After(deadline) {
			t.Fatalf("testpmd never set up the queues:\n%s", p.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p
}

// waitRX waits until testpmd reports at least want received packets (its
// report comes every second; at most 15 s).
func waitRX(p *testpmd.Proc, want uint64) uint64 {
	deadline := time.Now().Add(15 * time.Second)
	for {
		rx, _ := p.Stats()
		if rx >= want || time.Now().After(deadline) {
			time.Sleep(1100 * time.Millisecond) // one more report, to see any surplus
			rx, _ = p.Stats()
			return rx
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Frames aimed at the VM's queue pass its program, leave through its AF_XDP
// socket and reach testpmd, a real virtio front-end, exactly.
func TestReceiveIntoTestpmd(t *testing.T) {
	topo, rigs := setup(t, 1)
	r := rigs[0]
	pmd := startPMD(t, r, "rxonly", r.mac.String(), "")
	s := testnet.Sender(t, topo)
	const n = 3000
	spec := traffic.FrameSpec{Dst: r.mac, Src: topo.WireMAC, Size: 128, Tag: 1}
	for sent := 0; sent < n; sent += 500 {
		if err := s.Send(spec, r.q, uint32(sent), 500); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := waitRX(pmd, n); got != n {
		t.Errorf("testpmd received %d of %d frames", got, n)
	}
	st := r.port.Stats()
	v, _ := r.vm.Verdicts()
	if st.RXDelivered != n || st.RXDropped != 0 || v.Pass.Packets != n {
		t.Errorf("port %+v, verdicts %+v", st, v)
	}

	// Broadcasts on a shared queue (0) reach the guest too, through the
	// port's flood socket; those on its own queue came by XDP above.
	bspec := spec
	bspec.Dst, bspec.Tag = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 2
	if err := s.Send(bspec, 0, 0, 100); err != nil {
		t.Fatal(err)
	}
	if got := waitRX(pmd, n+100); got != n+100 {
		t.Errorf("testpmd received %d of %d frames after the broadcasts", got, n+100)
	}
	if st := r.port.Stats(); st.RXFlooded != 100 {
		t.Errorf("flooded %d of 100 broadcasts: %+v", st.RXFlooded, st)
	}
}

// What testpmd transmits with the VM's MAC leaves through the uplink; with
// another source MAC it is dropped as spoofed.
func TestTransmitFromTestpmd(t *testing.T) {
	topo, rigs := setup(t, 1)
	r := rigs[0]
	wire := testnet.PacketCounter(t, topo.WireNS, topo.Wire)
	pmd := startPMD(t, r, "txonly", r.mac.String(), topo.WireMAC.String())
	deadline := time.Now().Add(15 * time.Second)
	for r.port.Stats().TXSent < 10000 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	pmd.Stop()
	time.Sleep(300 * time.Millisecond)
	st := r.port.Stats()
	arrived := wire.Snapshot().Unmarked
	t.Logf("port %+v; the wire side saw %d frames", st, arrived)
	if st.TXSent < 10000 || st.TXSpoofed != 0 {
		t.Errorf("port %+v", st)
	}
	if arrived < st.TXSent*9/10 || arrived > st.TXSent {
		t.Errorf("the wire side saw %d of %d frames sent", arrived, st.TXSent)
	}

	spoofer := startPMD(t, r, "txonly", "02:66:66:66:66:66", topo.WireMAC.String())
	before := r.port.Stats()
	deadline = time.Now().Add(15 * time.Second)
	for r.port.Stats().TXSpoofed < 1000 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	spoofer.Stop()
	after := r.port.Stats()
	if after.TXSpoofed < 1000 || after.TXSent != before.TXSent {
		t.Errorf("spoofed frames: before %+v after %+v", before, after)
	}
}

// Under traffic to two VMs, VM1's front-end goes away and comes back: VM2
// keeps receiving every frame throughout, and VM1 receives again after it
// reconnects.
func TestReconnectUnderTraffic(t *testing.T) {
	topo, rigs := setup(t, 2)
	pmd2 := startPMD(t, rigs[1], "rxonly", rigs[1].mac.String(), "")
	pmd1, err := testpmd.Start(testpmd.Options{
		Vdevs: []string{fmt.Sprintf("net_virtio_user0,path=%s,queues=1,mac=%s", rigs[0].sock, rigs[0].mac)},
		Mode:  "rxonly", Prefix: "xhvprc1",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pmd1.Stop() })
	for deadline := time.Now().Add(30 * time.Second); !rigs[0].port.Device().Ready(0) || !strings.Contains(pmd1.Output(), "NIC statistics"); {
		if time.Now().After(deadline) {
			pmd1.Stop()
			t.Fatalf("first front-end of vm1 never came up:\n%s", pmd1.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	s := testnet.Sender(t, topo)
	spec1 := traffic.FrameSpec{Dst: rigs[0].mac, Src: topo.WireMAC, Size: 100, Tag: 1}
	spec2 := traffic.FrameSpec{Dst: rigs[1].mac, Src: topo.WireMAC, Size: 100, Tag: 2}
	const rounds, per = 30, 100
	for i := 0; i < rounds; i++ {
		if i == 10 {
			pmd1.Stop() // vm1's front-end disconnects mid-traffic
		}
		if err := s.Send(spec1, rigs[0].q, uint32(i*per), per); err != nil {
			t.Fatal(err)
		}
		if err := s.Send(spec2, rigs[1].q, uint32(i*per), per); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// vm2 keeps receiving: every frame sent to it is delivered into its
	// front-end or (when its testpmd, busy-polling beside vm1's on two
	// CPUs, was off its CPU for longer than the hold limit) counted as
	// dropped for want of buffers; what was delivered is what testpmd got.
	// CI saw 2256 of 3000 delivered now and then, on the code before the
	// hold rework too, so only most frames are required.
	want2 := uint64(rounds * per)
	deadline2 := time.Now().Add(15 * time.Second)
	for st := rigs[1].port.Stats(); st.RXDelivered+st.RXDropped < want2 && time.Now().Before(deadline2); st = rigs[1].port.Stats() {
		time.Sleep(50 * time.Millisecond)
	}
	st2 := rigs[1].port.Stats()
	got2 := waitRX(pmd2, st2.RXDelivered)
	if st2.RXDelivered+st2.RXDropped != want2 || got2 != st2.RXDelivered || st2.RXDelivered < want2/2 {
		t.Errorf("vm2 while vm1 reconnected: port delivered %d + dropped %d of %d sent, testpmd received %d (want all accounted for, testpmd's count the delivered one, at least half delivered)",
			st2.RXDelivered, st2.RXDropped, want2, got2)
	} else if st2.RXDropped > 0 {
		t.Logf("vm2: %d of %d frames dropped for want of guest buffers (testpmd off its CPU)", st2.RXDropped, want2)
	}
	// vm1 comes back: a new front-end on the same socket receives again.
	pmd1b := startPMD(t, rigs[0], "rxonly", rigs[0].mac.String(), "")
	if err := s.Send(spec1, rigs[0].q, 0, 500); err != nil {
		t.Fatal(err)
	}
	if got := waitRX(pmd1b, 500); got != 500 {
		t.Errorf("vm1 received %d of 500 after reconnecting", got)
	}
	// Frames that came while vm1 had no front-end were dropped then, not
	// held and handed to the next front-end seconds later; every frame is
	// either delivered or counted as dropped.
	st1 := rigs[0].port.Stats()
	if sum := st1.RXDelivered + st1.RXDropped; sum != rounds*per+500 {
		t.Errorf("vm1 delivered %d + dropped %d = %d, want every one of the %d frames sent", st1.RXDelivered, st1.RXDropped, sum, rounds*per+500)
	}
	t.Logf("vm1 port %+v, vm2 port %+v", st1, rigs[1].port.Stats())
}

// Busy polling moves the same frames (it only trades a CPU for latency).
func TestBusyPoll(t *testing.T) {
	topo := testnet.Topology(t, 4)
	dp, err := hostnet.Open(hostnet.Config{Uplink: topo.Uplink, NetNS: topo.HostNS})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	r := &vmRig{mac: net.HardwareAddr{2, 0, 0, 0, 7, 9}, q: 1, sock: filepath.Join(t.TempDir(), "vhost.sock")}
	if r.vm, err = dp.AddVM(hostnet.VMSpec{Name: "busy", MAC: r.mac, Queues: []int{1}, Delivery: guestprog.DeliverXSK}); err != nil {
		t.Fatal(err)
	}
	if r.port, err = vmport.Open(vmport.Config{VM: r.vm, Socket: r.sock, NetNS: topo.HostNS, BusyPoll: 200 * time.Microsecond}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.port.Close() })
	pmd := startPMD(t, r, "rxonly", r.mac.String(), "")
	if err := testnet.Sender(t, topo).Send(traffic.FrameSpec{Dst: r.mac, Src: topo.WireMAC, Size: 100, Tag: 1}, 1, 0, 1000); err != nil {
		t.Fatal(err)
	}
	if got := waitRX(pmd, 1000); got != 1000 {
		t.Errorf("testpmd received %d of 1000 with busy polling", got)
	}
}
