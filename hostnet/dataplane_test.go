package hostnet_test

import (
	"context"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	hostbpf "github.com/xdp-hostd/xdp-hostd/bpf"
	"github.com/xdp-hostd/xdp-hostd/guestprog"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/traffic"
)

var (
	mac1 = net.HardwareAddr{0x02, 0, 0, 0, 0x01, 0x01}
	mac2 = net.HardwareAddr{0x02, 0, 0, 0, 0x02, 0x02}
	// A unicast MAC that belongs to nobody.
	macUnknown = net.HardwareAddr{0x02, 0, 0, 0, 0x09, 0x09}
)

func openDP(t *testing.T, topo *hostnet.Topology) *hostnet.Dataplane {
	t.Helper()
	dp, err := hostnet.Open(hostnet.Config{Uplink: topo.Uplink, NetNS: topo.HostNS})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := dp.Close(); err != nil {
			t.Error(err)
		}
	})
	return dp
}

func addVM(t *testing.T, dp *hostnet.Dataplane, name string, mac net.HardwareAddr, queues ...int) *hostnet.VM {
	t.Helper()
	vm, err := dp.AddVM(hostnet.VMSpec{Name: name, MAC: mac, Queues: queues})
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

func setGuest(t *testing.T, vm *hostnet.VM, name string) {
	t.Helper()
	b, err := hostbpf.Guest(name)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := guestprog.Parse(b, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vm.SetProgram(obj, name); err != nil {
		t.Fatal(err)
	}
}

func send(t *testing.T, s *traffic.Sender, spec traffic.FrameSpec, queue, n int) {
	t.Helper()
	if err := s.Send(spec, queue, 0, n); err != nil {
		t.Fatal(err)
	}
}

// settle waits until c counted want marked frames (at most 5 s) and a quiet
// 100 ms after, so that surplus frames are counted too.
func settle(t *testing.T, c *traffic.Counter, want uint64) traffic.Snapshot {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.WaitFor(ctx, want)
	s := c.Snapshot()
	for _, err := range s.Errors {
		t.Error(err)
	}
	return s
}

func frameTo(topo *hostnet.Topology, dst net.HardwareAddr, tag, dport uint16) traffic.FrameSpec {
	src, _ := netip.AddrFromSlice(topo.WireIP)
	dstIP, _ := netip.AddrFromSlice(topo.UplinkIP)
	return traffic.FrameSpec{Dst: dst, Src: topo.WireMAC, SrcIP: src, DstIP: dstIP, SrcPort: 5555, DstPort: dport, Size: 100, Tag: tag}
}

func verdicts(t *testing.T, vm *hostnet.VM) hostnet.Verdicts {
	t.Helper()
	v, err := vm.Verdicts()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Two VMs behind one multi-queue uplink: traffic aimed at a VM's queue and
// MAC reaches that VM's tap and never the other's; unknown MACs reach the
// host stack; the counters match exactly what was sent.
func TestTwoVMsIsolation(t *testing.T) {
	topo := testnet.Topology(t, 4)
	dp := openDP(t, topo)
	vm1 := addVM(t, dp, "vm1", mac1, 1)
	vm2 := addVM(t, dp, "vm2", mac2, 2)
	tap1, tap2 := testnet.TapCounter(t, vm1.Tap()), testnet.TapCounter(t, vm2.Tap())
	s := testnet.Sender(t, topo)

	const n = 500
	send(t, s, frameTo(topo, mac1, 1, 7000), 1, n) // VM1's queue and MAC
	send(t, s, frameTo(topo, mac2, 2, 7000), 2, n) // VM2's queue and MAC
	send(t, s, frameTo(topo, mac1, 1, 7000), 0, n) // VM1's MAC on a shared queue
	send(t, s, frameTo(topo, macUnknown, 9, 7000), 0, n)
	send(t, s, frameTo(topo, macUnknown, 9, 7000), 3, n)

	s1, s2 := settle(t, tap1, 2*n), settle(t, tap2, n)
	if s1.ByTag[1] != 2*n || len(s1.ByTag) != 1 {
		t.Errorf("vm1's tap got %v, want exactly %d frames tagged 1", s1.ByTag, 2*n)
	}
	if s2.ByTag[2] != n || len(s2.ByTag) != 1 {
		t.Errorf("vm2's tap got %v, want exactly %d frames tagged 2", s2.ByTag, n)
	}
	for _, c := range []struct {
		vm   *hostnet.VM
		pass uint64
	}{{vm1, 2 * n}, {vm2, n}} {
		v := verdicts(t, c.vm)
		want := hostnet.Verdicts{Pass: hostnet.Count{Packets: c.pass, Bytes: c.pass * 100}}
		if v != want {
			t.Errorf("%s verdicts %+v, want %+v", c.vm.Name(), v, want)
		}
	}
	st, err := dp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Host.Packets != 2*n || st.NoProgram.Packets != 0 {
		t.Errorf("dispatch stats %+v, want %d to the host", st, 2*n)
	}
}

// Frames for the host's own address on a shared queue reach a socket on the
// host: the dispatcher leaves them to the host stack.
func TestHostTrafficReachesHostStack(t *testing.T) {
	topo := testnet.Topology(t, 4)
	dp := openDP(t, topo)
	addVM(t, dp, "vm1", mac1, 1)
	conn, err := traffic.ListenUDP(topo.HostNS, topo.UplinkIP, 7100)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := traffic.NewPayloadCounter(conn)
	defer c.Close()
	const n = 300
	send(t, testnet.Sender(t, topo), frameTo(topo, topo.UplinkMAC, 7, 7100), 0, n)
	if got := settle(t, c, n).ByTag[7]; got != n {
		t.Errorf("host socket got %d of %d datagrams", got, n)
	}
}

// XDP_TX sends the packet back out of the uplink to the wire side.
func TestXDPTX(t *testing.T) {
	topo := testnet.Topology(t, 4)
	dp := openDP(t, topo)
	vm := addVM(t, dp, "vm1", mac1, 1)
	setGuest(t, vm, "tx")
	wire := testnet.PacketCounter(t, topo.WireNS, topo.Wire)
	tap := testnet.TapCounter(t, vm.Tap())

	const n = 400
	send(t, testnet.Sender(t, topo), frameTo(topo, mac1, 1, 7000), 1, n)
	if got := settle(t, wire, n).ByTag[1]; got != n {
		t.Errorf("wire side got %d of %d frames back", got, n)
	}
	if got := tap.Total(); got != 0 {
		t.Errorf("the tap got %d frames; XDP_TX must not deliver to the VM", got)
	}
	if v := verdicts(t, vm); v.TX.Packets != n || v.Pass.Packets != 0 {
		t.Errorf("verdicts %+v, want %d TX", v, n)
	}
}

// The port table: redirects to ports outside it are dropped and counted,
// broadcast reaches every port but the ingress, removing a port stops
// deliveries to it.
func TestPortTable(t *testing.T) {
	topo := testnet.Topology(t, 4)
	dp := openDP(t, topo)
	vm := addVM(t, dp, "vm1", mac1, 1)
	other := addVM(t, dp, "vm2", mac2, 2)
	setGuest(t, vm, "port") // UDP port 9000+N -> port N; 8999 -> broadcast

	p1, p1w, err := topo.AddPortPair(topo.Prefix + "p1")
	if err != nil {
		t.Fatal(err)
	}
	p2, p2w, err := topo.AddPortPair(topo.Prefix + "p2")
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.AddPort(1, p1); err != nil {
		t.Fatal(err)
	}
	if err := vm.AddPort(2, p2); err != nil {
		t.Fatal(err)
	}
	if err := vm.AddPort(1, p2); err == nil {
		t.Error("adding port 1 twice succeeded")
	}
	at1, at2 := testnet.PacketCounter(t, topo.WireNS, p1w), testnet.PacketCounter(t, topo.WireNS, p2w)
	wire := testnet.PacketCounter(t, topo.WireNS, topo.Wire)
	otherTap := testnet.TapCounter(t, other.Tap())
	s := testnet.Sender(t, topo)
	const n = 200

	t.Run("redirect to a port in the table", func(t *testing.T) {
		send(t, s, frameTo(topo, mac1, 11, 9001), 1, n)
		if got := settle(t, at1, n).ByTag[11]; got != n {
			t.Errorf("port 1 got %d of %d", got, n)
		}
	})
	t.Run("redirect to a port not in the table", func(t *testing.T) {
		before := verdicts(t, vm)
		send(t, s, frameTo(topo, mac1, 12, 9005), 1, n)
		time.Sleep(200 * time.Millisecond)
		after := verdicts(t, vm)
		if d := after.NoPort.Packets - before.NoPort.Packets; d != n {
			t.Errorf("no_port grew by %d, want %d", d, n)
		}
		if after.Redirect != before.Redirect || after.Pass != before.Pass {
			t.Errorf("redirect or pass counted: before %+v after %+v", before, after)
		}
	})
	t.Run("broadcast reaches every port but the ingress", func(t *testing.T) {
		send(t, s, frameTo(topo, mac1, 13, 8999), 1, n)
		if got := settle(t, at1, 2*n).ByTag[13]; got != n {
			t.Errorf("port 1 got %d of %d broadcast frames", got, n)
		}
		if got := settle(t, at2, n).ByTag[13]; got != n {
			t.Errorf("port 2 got %d of %d broadcast frames", got, n)
		}
		if got := wire.Snapshot().ByTag[13]; got != 0 {
			t.Errorf("the ingress (uplink) got %d broadcast frames back", got)
		}
		if got := otherTap.Total(); got != 0 {
			t.Errorf("another VM's tap got %d frames", got)
		}
	})
	t.Run("another VM cannot reach this VM's ports", func(t *testing.T) {
		setGuest(t, other, "port")
		before := verdicts(t, other)
		send(t, s, frameTo(topo, mac2, 16, 9001), 2, n) // vm2 asks for port 1: not in its table
		time.Sleep(200 * time.Millisecond)
		if d := verdicts(t, other).NoPort.Packets - before.NoPort.Packets; d != n {
			t.Errorf("vm2's redirects to a port of vm1's table: %d no_port, want %d", d, n)
		}
		if got := at1.Snapshot().ByTag[16]; got != 0 {
			t.Errorf("vm1's port 1 got %d frames from vm2's program", got)
		}
	})
	t.Run("removing a port during traffic stops deliveries", func(t *testing.T) {
		before := verdicts(t, vm)
		base := at1.Snapshot().ByTag[14]
		done := make(chan error, 1)
		const rounds, per = 20, 50
		go func() {
			for i := 0; i < rounds; i++ {
				if err := s.Send(frameTo(topo, mac1, 14, 9001), 1, uint32(i*per), per); err != nil {
					done <- err
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
			done <- nil
		}()
		time.Sleep(40 * time.Millisecond)
		if err := vm.RemovePort(1); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
		delivered := at1.Snapshot().ByTag[14] - base
		after := verdicts(t, vm)
		redirected := after.Redirect.Packets - before.Redirect.Packets
		aborted := after.NoPort.Packets - before.NoPort.Packets
		if redirected+aborted != rounds*per || delivered != redirected {
			t.Errorf("sent %d: redirected %d, delivered %d, aborted %d", rounds*per, redirected, delivered, aborted)
		}
		if aborted == 0 {
			t.Error("no frame was refused after the port was removed")
		}
		// Nothing reaches the removed port any more.
		send(t, s, frameTo(topo, mac1, 15, 9001), 1, n)
		time.Sleep(200 * time.Millisecond)
		if got := at1.Snapshot().ByTag[15]; got != 0 {
			t.Errorf("removed port still got %d frames", got)
		}
		if err := vm.RemovePort(1); err == nil {
			t.Error("removing a removed port succeeded")
		}
	})
}

// A VM's tap transmit: frames from the VM's own MAC leave through the
// uplink, others are dropped and counted.
func TestTapTransmitAntiSpoof(t *testing.T) {
	topo := testnet.Topology(t, 2)
	dp := openDP(t, topo)
	vm := addVM(t, dp, "vm1", mac1, 1)
	wire := testnet.PacketCounter(t, topo.WireNS, topo.Wire)
	good := traffic.FrameSpec{Dst: topo.WireMAC, Src: mac1, Size: 80, Tag: 21}
	spoof := traffic.FrameSpec{Dst: topo.WireMAC, Src: mac2, Size: 80, Tag: 22}
	q := vm.Tap().Queues()[0]
	if err := traffic.WriteFrames(q, good, 300); err != nil {
		t.Fatal(err)
	}
	if err := traffic.WriteFrames(q, spoof, 50); err != nil {
		t.Fatal(err)
	}
	snap := settle(t, wire, 300)
	if snap.ByTag[21] != 300 || snap.ByTag[22] != 0 {
		t.Errorf("wire got %v, want 300 frames tagged 21 and none tagged 22", snap.ByTag)
	}
	st, err := vm.TXStats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Redirected.Packets != 300 || st.Spoofed.Packets != 50 {
		t.Errorf("tx stats %+v, want 300 redirected and 50 spoofed", st)
	}
}

func TestMain(m *testing.M) {
	os.Exit(m.Run())
}

// A tap that exists already (as QEMU or libvirt would create it) is adopted:
// the VM's traffic goes to whoever holds its queues, and removing the VM
// leaves the tap in place with no program attached.
func TestAdoptExistingTap(t *testing.T) {
	topo := testnet.Topology(t, 4)
	qemuTap, err := hostnet.CreateTap(hostnet.TapOptions{Name: "qemu0", Queues: 2, NetNS: topo.HostNS})
	if err != nil {
		t.Fatal(err)
	}
	defer qemuTap.Close()
	reader := testnet.TapCounter(t, qemuTap)
	dp := openDP(t, topo)
	vm, err := dp.AddVM(hostnet.VMSpec{Name: "vm1", MAC: mac1, Queues: []int{1}, Tap: "qemu0"})
	if err != nil {
		t.Fatal(err)
	}
	if !vm.Tap().Adopted() || len(vm.Tap().Queues()) != 0 {
		t.Errorf("tap not adopted: %+v", vm.Tap())
	}
	const n = 300
	send(t, testnet.Sender(t, topo), frameTo(topo, mac1, 1, 7000), 1, n)
	if got := settle(t, reader, n).ByTag[1]; got != n {
		t.Errorf("the tap's owner got %d of %d frames", got, n)
	}
	if err := dp.RemoveVM("vm1"); err != nil {
		t.Fatal(err)
	}
	err = testnet.Runner(t, topo.HostNS).Do(func() error {
		l, err := netlink.LinkByName("qemu0")
		if err != nil {
			return err
		}
		if l.Attrs().Xdp != nil && l.Attrs().Xdp.Attached {
			t.Error("the VM's transmit program is still attached to the adopted tap")
		}
		return nil
	})
	if err != nil {
		t.Errorf("the adopted tap is gone: %v", err)
	}
}

// VMs found by MAC on a shared queue: through the direct-mapped cache, and
// through the hash map when two MACs share a cache entry; removing the VM
// that holds the entry hands it to the other.
func TestMACCacheCollision(t *testing.T) {
	topo := testnet.Topology(t, 2)
	dp := openDP(t, topo)
	a := net.HardwareAddr{0x02, 0, 0, 0, 0x0a, 0x01}
	var b net.HardwareAddr
	for i := 0; i < 1<<20 && b == nil; i++ {
		c := net.HardwareAddr{0x02, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)}
		if c.String() != a.String() && hostnet.MacIndex(c) == hostnet.MacIndex(a) {
			b = c
		}
	}
	if b == nil {
		t.Fatal("no colliding MAC found")
	}
	vmA := addVM(t, dp, "a", a)
	vmB := addVM(t, dp, "b", b)
	tapA, tapB := testnet.TapCounter(t, vmA.Tap()), testnet.TapCounter(t, vmB.Tap())
	s := testnet.Sender(t, topo)
	const n = 200
	send(t, s, frameTo(topo, a, 1, 7000), 0, n)
	send(t, s, frameTo(topo, b, 2, 7000), 0, n)
	if ga, gb := settle(t, tapA, n).ByTag[1], settle(t, tapB, n).ByTag[2]; ga != n || gb != n {
		t.Errorf("by MAC with a shared cache entry: a got %d, b got %d, want %d each", ga, gb, n)
	}
	if err := dp.RemoveVM("a"); err != nil {
		t.Fatal(err)
	}
	send(t, s, frameTo(topo, b, 3, 7000), 0, n)
	if gb := settle(t, tapB, n).ByTag[3]; gb != n {
		t.Errorf("after the cache entry's owner left: b got %d of %d", gb, n)
	}
}

// Broadcasts on a shared queue reach the host and every tap VM (ARP needs
// it); a broadcast on a VM's dedicated queue is that VM's alone.
func TestBroadcastFlood(t *testing.T) {
	topo := testnet.Topology(t, 4)
	dp := openDP(t, topo)
	vm1 := addVM(t, dp, "vm1", mac1, 1)
	vm2 := addVM(t, dp, "vm2", mac2, 2)
	tap1, tap2 := testnet.TapCounter(t, vm1.Tap()), testnet.TapCounter(t, vm2.Tap())
	s := testnet.Sender(t, topo)
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	const n = 200
	send(t, s, frameTo(topo, bcast, 1, 7000), 0, n)
	if g1, g2 := settle(t, tap1, n).ByTag[1], settle(t, tap2, n).ByTag[1]; g1 != n || g2 != n {
		t.Errorf("shared-queue broadcast: vm1 got %d, vm2 got %d, want %d each", g1, g2, n)
	}
	if st, _ := dp.Stats(); st.Host.Packets != n {
		t.Errorf("the host stack got %d of %d broadcasts", st.Host.Packets, n)
	}
	send(t, s, frameTo(topo, bcast, 2, 7000), 1, n)
	if g1 := settle(t, tap1, 2*n).ByTag[2]; g1 != n {
		t.Errorf("vm1 got %d of %d broadcasts on its queue", g1, n)
	}
	if g2 := tap2.Snapshot().ByTag[2]; g2 != 0 {
		t.Errorf("vm2 got %d broadcasts from vm1's dedicated queue", g2)
	}
	if fs, _ := dp.FloodStats(); fs.Packets != 2*n {
		t.Errorf("flood copies %d, want %d", fs.Packets, 2*n)
	}
}
