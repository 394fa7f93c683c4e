package hostnet_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	hostbpf "github.com/xdp-hostd/xdp-hostd/bpf"
	"github.com/xdp-hostd/xdp-hostd/guestprog"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/zerocopy"
)

// xskOn opens an AF_XDP socket on the uplink's RX queue q.
func xskOn(t *testing.T, topo *hostnet.Topology, q int) *zerocopy.Socket {
	t.Helper()
	u, err := zerocopy.AllocUMEM(64, 2048)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	s, err := zerocopy.Open(zerocopy.Options{NetNS: topo.HostNS, Ifname: topo.Uplink, Queue: q, UMEM: u, RingSize: 32})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// waitVerdicts waits (at most 5 s) until ok says the VM's counters are what
// the test wants, and returns them.
func waitVerdicts(t *testing.T, vm *hostnet.VM, ok func(hostnet.Verdicts) bool) hostnet.Verdicts {
	t.Helper()
	v := verdicts(t, vm)
	for deadline := time.Now().Add(5 * time.Second); !ok(v) && time.Now().Before(deadline); v = verdicts(t, vm) {
		time.Sleep(10 * time.Millisecond)
	}
	return v
}

// A program left running on the pins is adopted by a VM of the next
// dataplane whose object is lost: the same kernel program runs in the new
// dispatcher, its counters go on, and its host maps say what the new VM's
// do: the port table it has now (not the one it had), its new AF_XDP
// socket (a vhost-user VM). A program ID the pins do not hold is refused,
// changing nothing.
func TestAdoptPinnedProgram(t *testing.T) {
	topo := testnet.Topology(t, 4)
	var ports []string
	for _, n := range []string{"p1", "p2"} {
		if _, _, err := topo.AddPortPair(topo.Prefix + n); err != nil {
			t.Fatal(err)
		}
		ports = append(ports, topo.Prefix+n)
	}
	pins := t.TempDir()
	t.Cleanup(func() { unix.Unmount(pins, unix.MNT_DETACH) })
	open := func() *hostnet.Dataplane {
		t.Helper()
		dp, err := hostnet.Open(hostnet.Config{Uplink: topo.Uplink, NetNS: topo.HostNS, PinDir: pins})
		if err != nil {
			t.Fatal(err)
		}
		return dp
	}
	spec := hostnet.VMSpec{Name: "vm1", MAC: mac1, Queues: []int{1}, Delivery: guestprog.DeliverXSK}
	sender := testnet.Sender(t, topo)

	dp1 := open()
	released := false
	t.Cleanup(func() {
		if !released {
			dp1.Close()
		}
	})
	vm, err := dp1.AddVM(spec)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := hostbpf.Guest("port")
	obj, err := guestprog.Parse(b, "")
	if err != nil {
		t.Fatal(err)
	}
	kid, err := vm.SetGuestProgram(obj, "guest", 7)
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.AddPort(1, ports[0]); err != nil {
		t.Fatal(err)
	}
	s1 := xskOn(t, topo, 1)
	if err := vm.SetSocket(1, s1.FD()); err != nil {
		t.Fatal(err)
	}
	send(t, sender, frameTo(topo, mac1, 1, 7000), 1, 50)
	if v := waitVerdicts(t, vm, func(v hostnet.Verdicts) bool { return v.Pass.Packets == 50 }); v.Pass.Packets != 50 || v.Undelivered.Packets != 0 {
		t.Fatalf("before the release: %+v", v)
	}
	s1.Close() // as the daemon's vhost-user port does when it stops
	released = true
	if err := dp1.Release(); err != nil {
		t.Fatal(err)
	}

	dp2 := open()
	defer dp2.Close()
	vm2, err := dp2.AddVM(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := vm2.AddPort(2, ports[1]); err != nil {
		t.Fatal(err)
	}
	s2 := xskOn(t, topo, 1)
	if err := vm2.SetSocket(1, s2.FD()); err != nil {
		t.Fatal(err)
	}
	if _, err := vm2.AdoptPinnedProgram(8); !errors.Is(err, hostnet.ErrNoPinnedProgram) {
		t.Errorf("adopting a program the pins do not hold: %v", err)
	}
	got, err := vm2.AdoptPinnedProgram(7)
	if err != nil || got != kid {
		t.Fatalf("adopt program 7: kernel program %d, %v; want %d", got, err, kid)
	}
	if err := dp2.Activate(); err != nil {
		t.Fatal(err)
	}
	// Passed frames reach the new socket, port 2 is the new table's, port
	// 1 is gone; the counters go on from before the restart.
	send(t, sender, frameTo(topo, mac1, 2, 7000), 1, 50)
	send(t, sender, frameTo(topo, mac1, 3, 9002), 1, 30)
	send(t, sender, frameTo(topo, mac1, 4, 9001), 1, 20)
	v := waitVerdicts(t, vm2, func(v hostnet.Verdicts) bool {
		return v.Pass.Packets == 100 && v.Redirect.Packets == 30 && v.NoPort.Packets == 20
	})
	if v.Pass.Packets != 100 || v.Undelivered.Packets != 0 || v.Redirect.Packets != 30 || v.NoPort.Packets != 20 {
		t.Errorf("after the adoption: pass %d (want 50 before and 50 after), undelivered %d, redirect %d (want 30 to port 2), no_port %d (want 20 to the old port 1)",
			v.Pass.Packets, v.Undelivered.Packets, v.Redirect.Packets, v.NoPort.Packets)
	}
	var keys []uint32
	var k uint32
	for err := vm2.Maps().PortTable.NextKey(nil, &k); err == nil; err = vm2.Maps().PortTable.NextKey(k, &k) {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if !slices.Equal(keys, []uint32{0, 2}) {
		t.Errorf("the running program's port table has ports %v, want [0 2]", keys)
	}
}
