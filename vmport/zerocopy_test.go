package vmport_test

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/guestprog"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/traffic"
	"github.com/xdp-hostd/xdp-hostd/vhost/vhosttest"
	"github.com/xdp-hostd/xdp-hostd/vmport"
)

// setupMode is setup with a delivery mode per VM.
func setupMode(t *testing.T, modes ...string) (*hostnet.Topology, []*vmRig) {
	t.Helper()
	topo := testnet.Topology(t, 4)
	dp, err := hostnet.Open(hostnet.Config{Uplink: topo.Uplink, NetNS: topo.HostNS})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	var rigs []*vmRig
	for i, mode := range modes {
		r := &vmRig{mac: net.HardwareAddr{2, 0, 0, 0, 8, byte(i + 1)}, q: i + 1, sock: filepath.Join(t.TempDir(), "vhost.sock")}
		r.vm, err = dp.AddVM(hostnet.VMSpec{Name: fmt.Sprintf("zc%d", i+1), MAC: r.mac, Queues: []int{r.q}, Delivery: guestprog.DeliverXSK})
		if err != nil {
			t.Fatal(err)
		}
		r.port, err = vmport.Open(vmport.Config{VM: r.vm, Socket: r.sock, NetNS: topo.HostNS, Mode: mode})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.port.Close() })
		rigs = append(rigs, r)
	}
	return topo, rigs
}

// sealable is guest memory as QEMU's memory-backend-memfd makes it: a memfd
// that can be sealed against shrinking.
func sealable(size int64) (int, error) {
	fd, err := unix.MemfdCreate("zc-guest", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err == nil {
		err = unix.Ftruncate(fd, size)
	}
	return fd, err
}

// A VM in zero-copy mode receives every frame into its own buffers through
// an AF_XDP socket over its memory, its transmissions leave the uplink, its
// broadcasts are injected; after a disconnect and a reconnect under the
// same port it is zero-copy again. A VM whose memory can shrink falls back
// to copy with the reason reported, and still gets every frame.
func TestZeroCopyFrontEnd(t *testing.T) {
	topo, rigs := setupMode(t, vmport.ModeZeroCopy, vmport.ModeZeroCopy)
	zc, fb := rigs[0], rigs[1]
	s := testnet.Sender(t, topo)
	seq := uint32(0)
	// exchange sends n frames to r in bursts of 32 and has fe repost its
	// buffers after each: it returns how many arrived.
	active := func(r *vmRig) bool { a := r.port.ZeroCopy().Active; return len(a) == 1 && a[0] }
	exchange := func(r *vmRig, fe *vhosttest.FrontEnd, n, size int) int {
		t.Helper()
		got := 0
		for sent := 0; sent < n; sent += 32 {
			b := min(32, n-sent)
			if err := s.Send(traffic.FrameSpec{Dst: r.mac, Src: topo.WireMAC, Size: size, Tag: uint16(r.q)}, r.q, seq, b); err != nil {
				t.Fatal(err)
			}
			seq += uint32(b)
			k := receiveN(t, fe, r.mac, b)
			got += k
			before := r.port.ZeroCopy().Stats.Posted
			fe.PostRX(k)
			if active(r) { // frames finding no guest buffer in the kernel are dropped: wait for them
				waitUntil(t, "buffers posted", func() bool { return r.port.ZeroCopy().Stats.Posted >= before+uint64(k) })
			}
		}
		return got
	}

	fe := vhosttest.Dial(t, zc.sock, vhosttest.Options{Memory: sealable})
	waitUntil(t, "zero-copy on", func() bool { return active(zc) })
	fe.PostRX(64)
	// Frames that come before the guest's buffers reached the kernel are
	// dropped (FillRingEmpty): wait for them.
	posted := func(n uint64) func() bool {
		return func() bool { return zc.port.ZeroCopy().Stats.Posted >= n }
	}
	waitUntil(t, "56 buffers posted (8 held back for broadcasts)", posted(56))
	if got := exchange(zc, fe, 1000, 200); got != 1000 {
		t.Errorf("zero-copy VM received %d of 1000 frames", got)
	}
	if got := exchange(zc, fe, 200, 1514); got != 200 {
		t.Errorf("zero-copy VM received %d of 200 full-size frames", got)
	}
	st := zc.port.ZeroCopy()
	t.Logf("zero-copy: %+v", st)
	if st.Stats.Delivered != 1200 || st.Stats.KernelDropped+st.Stats.RefusedChain+st.Stats.RefusedTiny+st.Stats.RefusedOutside+st.Stats.RefusedOverlap+st.Stats.BadCompletions != 0 {
		t.Errorf("zero-copy stats %+v", st.Stats)
	}
	if pst := zc.port.Stats(); pst.RXDelivered != 1200 {
		t.Errorf("port stats %+v", pst)
	}
	// TX stays copy (through the packet socket): it reaches the wire.
	wire := testnet.PacketCounter(t, topo.WireNS, topo.Wire)
	frame := make([]byte, 128)
	n, err := traffic.FrameSpec{Dst: topo.WireMAC, Src: zc.mac, Size: 128, Tag: 9}.Build(frame, 0)
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		fe.Transmit(frame[:n])
	}
	waitUntil(t, "10 frames on the wire", func() bool { return wire.Snapshot().ByTag[9] >= 10 })
	if st := zc.port.Stats(); st.TXSent != 10 {
		t.Errorf("TX in zero-copy mode: %+v", st)
	}

	// Broadcasts on a shared queue reach the guest through the flood
	// socket, copied into buffers held back for them.
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	if err := s.Send(traffic.FrameSpec{Dst: bcast, Src: topo.WireMAC, Size: 100, Tag: 5}, 0, 0, 5); err != nil {
		t.Fatal(err)
	}
	if got := receiveN(t, fe, bcast, 5); got != 5 {
		t.Errorf("zero-copy VM received %d of 5 broadcasts", got)
	}
	fe.PostRX(5)
	if st := zc.port.ZeroCopy().Stats; st.Injected < 5 {
		t.Errorf("injected %d of 5 broadcasts: %+v", st.Injected, st)
	}

	// Disconnect and reconnect: copy in between, zero-copy again after.
	fe.Close()
	waitUntil(t, "zero-copy off after the disconnect", func() bool { return !active(zc) && !zc.port.FrontEndConnected() })
	fe = vhosttest.Dial(t, zc.sock, vhosttest.Options{Memory: sealable})
	waitUntil(t, "zero-copy on again", func() bool { return active(zc) })
	before := zc.port.ZeroCopy().Stats.Posted
	fe.PostRX(64)
	waitUntil(t, "56 buffers posted again", posted(before+56))
	if got := exchange(zc, fe, 500, 300); got != 500 {
		t.Errorf("after the reconnect: %d of 500 frames", got)
	}

	// Shrinkable memory: copy, with the reason.
	fe2 := vhosttest.Dial(t, fb.sock, vhosttest.Options{})
	waitUntil(t, "fallback ready", func() bool { return fb.port.Device().Ready(0) })
	fe2.PostRX(64)
	if got := exchange(fb, fe2, 300, 200); got != 300 {
		t.Errorf("fallback VM received %d of 300 frames", got)
	}
	fst := fb.port.ZeroCopy()
	if active(fb) || !strings.Contains(fst.Fallback, "shrink") || fst.Mode != vmport.ModeZeroCopy {
		t.Errorf("fallback status %+v, want copy with a reason about shrinking", fst)
	}
}
