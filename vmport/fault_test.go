package vmport_test

import (
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/traffic"
	"github.com/xdp-hostd/xdp-hostd/vhost/vhosttest"
)

// waitUntil polls cond every millisecond for at most 10 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// receiveN waits until fe received n frames addressed to mac (others, such
// as flooded multicast, are ignored) and returns how many it got.
func receiveN(t *testing.T, fe *vhosttest.FrontEnd, mac net.HardwareAddr, n int) int {
	t.Helper()
	got := 0
	for deadline := time.Now().Add(10 * time.Second); got < n && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		for _, f := range fe.Received() {
			if len(f) >= 6 && bytes.Equal(f[:6], mac) {
				got++
			}
		}
	}
	return got
}

// connect plugs a fake front-end into r's socket and waits for its queues.
func connect(t *testing.T, r *vmRig) *vhosttest.FrontEnd {
	t.Helper()
	fe := vhosttest.Dial(t, r.sock, vhosttest.Options{})
	waitUntil(t, r.vm.Name()+"'s queues", func() bool { return r.port.Device().Ready(0) })
	return fe
}

// A VM's front-end shrinks its guest memory file under the port: the fault
// of the receive thread (RX) and of the TX handler on the kick goroutine
// breaks only that VM's queue and connection. The other VM keeps its
// traffic, and the next front-end of the VM moves frames both ways again
// (the receive thread and the AF_XDP socket were not left locked). On the
// old code the test binary dies of SIGBUS.
func TestGuestMemoryFault(t *testing.T) {
	topo, rigs := setup(t, 2)
	vm1, vm2 := rigs[0], rigs[1]
	s := testnet.Sender(t, topo)
	seq := uint32(0)
	send := func(r *vmRig, n int) {
		t.Helper()
		spec := traffic.FrameSpec{Dst: r.mac, Src: topo.WireMAC, Size: 128, Tag: uint16(r.q)}
		if err := s.Send(spec, r.q, seq, n); err != nil {
			t.Fatal(err)
		}
		seq += uint32(n)
	}
	txFrame := func(r *vmRig) []byte {
		b := make([]byte, 300)
		n, err := traffic.FrameSpec{Dst: topo.WireMAC, Src: r.mac, Size: 300, Tag: 9}.Build(b, 0)
		if err != nil {
			t.Fatal(err)
		}
		return b[:n]
	}
	fe2 := connect(t, vm2)
	vm2Works := func(what string) {
		t.Helper()
		fe2.PostRX(30)
		send(vm2, 25)
		if got := receiveN(t, fe2, vm2.mac, 25); got != 25 {
			t.Errorf("%s: vm2 received %d of 25 frames", what, got)
		}
	}
	vm2Works("before the faults")
	checkFault := func(fe *vhosttest.FrontEnd, queue int) {
		t.Helper()
		waitUntil(t, "vm1's queue reported broken", func() bool { return vm1.port.Device().Stats()[queue].Broken == 1 })
		if !fe.ErrorSignalled(queue) {
			t.Errorf("queue %d: error eventfd not written", queue)
		}
		if err := fe.WaitClosed(5 * time.Second); err != nil {
			t.Error(err)
		}
		waitUntil(t, "vm1's front-end to be dropped", func() bool { return !vm1.port.FrontEndConnected() })
	}

	// RX: a buffer beyond the new end of the file; the receive thread's
	// Offer faults.
	fe1 := connect(t, vm1)
	fe1.PostRX(1)
	send(vm1, 1)
	if got := receiveN(t, fe1, vm1.mac, 1); got != 1 {
		t.Fatalf("vm1 received %d of 1 frame", got)
	}
	fe1.PostRXFar()
	if err := fe1.Shrink(1 << 20); err != nil {
		t.Fatal(err)
	}
	send(vm1, 5)
	checkFault(fe1, 0)
	fe1.Close()
	vm2Works("after vm1's RX fault")

	// TX: a frame whose first bytes are in memory and the rest beyond the
	// end: the MAC check passes, the copy into the UMEM faults.
	fe1 = connect(t, vm1)
	before := vm1.port.Stats().TXSent
	fe1.Transmit(txFrame(vm1))
	waitUntil(t, "vm1's frame sent", func() bool { return vm1.port.Stats().TXSent == before+1 })
	sendAcross := fe1.TransmitAcross(txFrame(vm1), 64)
	if err := fe1.Shrink(1 << 20); err != nil {
		t.Fatal(err)
	}
	sendAcross()
	checkFault(fe1, 1)
	fe1.Close()
	vm2Works("after vm1's TX fault")

	// The next front-end of vm1 moves frames both ways.
	fe1 = connect(t, vm1)
	fe1.PostRX(40)
	send(vm1, 30)
	if got := receiveN(t, fe1, vm1.mac, 30); got != 30 {
		t.Errorf("vm1's next front-end received %d of 30 frames", got)
	}
	before = vm1.port.Stats().TXSent
	for range 10 {
		fe1.Transmit(txFrame(vm1))
	}
	waitUntil(t, "vm1's next front-end's frames sent", func() bool { return vm1.port.Stats().TXSent == before+10 })
	st := vm2.port.Device().Stats()
	if st[0].Broken != 0 || st[1].Broken != 0 {
		t.Errorf("vm2's queues broken: %+v", st)
	}
	t.Logf("vm1 port %+v, queues %+v", vm1.port.Stats(), vm1.port.Device().Stats())
}
