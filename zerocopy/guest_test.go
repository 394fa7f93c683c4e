package zerocopy

import (
	"bytes"
	"encoding/binary"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/traffic"
	"github.com/xdp-hostd/xdp-hostd/vhost"
)

// Guest memory of the test driver: two memfds, as QEMU shares them.
// Region 0 (1 MiB at guest-physical 0) holds the rings; region 1 (4 MiB at
// 0x100000, starting 4 KiB into its file) the RX buffers.
const (
	gRingSize = 256
	gDesc     = 0x1000
	gAvail    = 0x2000
	gUsed     = 0x3000
	gR0Size   = 1 << 20
	gR1GPA    = 0x100000
	gR1Size   = 4 << 20
	gR1Off    = 4096
	gBufs     = gR1GPA + 0x10000 // first RX buffer
	gBufSize  = 2048
	gUVA0     = 0x7f0000000000
	gUVA1     = 0x7f1000000000
)

// testGuest is a virtio-net driver in miniature: it posts RX buffers in its
// own mappings of the memfds and reads used entries back. Its device side
// (the memory table, the RX virtqueue, the contiguous view) is what the
// vhost-user back-end builds from the same fds.
type testGuest struct {
	t        testing.TB
	fds      [2]int
	mem      [2][]byte // the driver's mappings (whole files)
	availIdx uint16
	usedSeen uint16

	table *vhost.MemoryTable
	vq    *vhost.Virtqueue
	view  *vhost.GuestView
}

func newTestGuest(t testing.TB) *testGuest {
	t.Helper()
	g := &testGuest{t: t}
	for i, size := range []int{gR0Size, gR1Off + gR1Size} {
		fd, err := unix.MemfdCreate("zc-guest", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		if err := unix.Ftruncate(fd, int64(size)); err != nil {
			t.Fatal(err)
		}
		m, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Munmap(m) })
		g.fds[i], g.mem[i] = fd, m
	}
	g.attach(0)
	return g
}

// attach builds the back-end's side from the fds, as a SET_MEM_TABLE and
// the vring messages do; the queue resumes at lastAvail.
func (g *testGuest) attach(lastAvail uint16) {
	t := g.t
	t.Helper()
	var fds []int
	for _, fd := range g.fds {
		d, err := unix.Dup(fd)
		if err != nil {
			t.Fatal(err)
		}
		fds = append(fds, d)
	}
	table, err := vhost.NewMemoryTable([]vhost.MemoryRegion{
		{GuestPhysAddr: 0, Size: gR0Size, UserAddr: gUVA0},
		{GuestPhysAddr: gR1GPA, Size: gR1Size, UserAddr: gUVA1, MmapOffset: gR1Off},
	}, fds)
	if err != nil {
		t.Fatal(err)
	}
	g.table = table
	t.Cleanup(func() { table.Close() })
	g.vq, err = vhost.NewVirtqueue(table, vhost.VirtqueueConfig{
		Size: gRingSize, DescAddr: gUVA0 + gDesc, AvailAddr: gUVA0 + gAvail, UsedAddr: gUVA0 + gUsed,
		LastAvail: lastAvail,
	})
	if err != nil {
		t.Fatal(err)
	}
	g.view, err = table.MapContiguous()
	if err != nil {
		t.Fatal(err)
	}
	view := g.view
	t.Cleanup(func() { view.Close() })
}

// detach unmaps the back-end's side (after the GuestRX is closed).
func (g *testGuest) detach() {
	if err := g.view.Close(); err != nil {
		g.t.Error(err)
	}
	if err := g.table.Close(); err != nil {
		g.t.Error(err)
	}
}

// at is the driver's view of guest-physical memory.
func (g *testGuest) at(gpa uint64, n int) []byte {
	if gpa >= gR1GPA {
		o := gpa - gR1GPA + gR1Off
		return g.mem[1][o : o+uint64(n)]
	}
	return g.mem[0][gpa : gpa+uint64(n)]
}

// post makes one descriptor (head) available.
func (g *testGuest) post(head uint16, gpa uint64, l uint32, flags uint16) {
	d := g.mem[0][gDesc+16*int(head):]
	binary.LittleEndian.PutUint64(d[0:], gpa)
	binary.LittleEndian.PutUint32(d[8:], l)
	binary.LittleEndian.PutUint16(d[12:], flags)
	binary.LittleEndian.PutUint16(d[14:], 0)
	binary.LittleEndian.PutUint16(g.mem[0][gAvail+4+2*int(g.availIdx%gRingSize):], head)
	g.availIdx++
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&g.mem[0][gAvail])), uint32(g.availIdx)<<16)
}

// postBuf posts buffer i of the standard layout as head i.
func (g *testGuest) postBuf(i int) {
	g.post(uint16(i), bufGPA(i), gBufSize, 2 /* WRITE */)
}

func bufGPA(i int) uint64 { return gBufs + uint64(i)*gBufSize }

type usedElem struct {
	head uint16
	len  uint32
}

// used returns the used entries published since the last call.
func (g *testGuest) used(out []usedElem) []usedElem {
	idx := uint16(atomic.LoadUint32((*uint32)(unsafe.Pointer(&g.mem[0][gUsed]))) >> 16)
	for ; g.usedSeen != idx; g.usedSeen++ {
		e := g.mem[0][gUsed+4+8*int(g.usedSeen%gRingSize):]
		out = append(out, usedElem{uint16(binary.LittleEndian.Uint32(e)), binary.LittleEndian.Uint32(e[4:])})
	}
	return out
}

func openGuestRX(t testing.TB, topo *hostnet.Topology, g *testGuest, q int) *GuestRX {
	t.Helper()
	rx, err := OpenGuestRX(GuestRXOptions{NetNS: topo.HostNS, Ifname: topo.Uplink, Queue: q,
		View: g.view, VQ: g.vq, HeaderLen: 12, RingSize: gRingSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rx.Close(false) })
	return rx
}

// guestRun is what the driver loop saw.
type guestRun struct {
	frames, badHeader, unmarked, dups, zeroLen int
	byHead                                     map[uint16]int // zero-length entries by head
}

// drive polls rx and lets the driver consume and repost (when repost) what
// it was given, until want frames arrived, stop is closed or the deadline
// passes. tag is the marker tag expected; progress counts frames.
func drive(g *testGuest, rx *GuestRX, tag uint16, want int, repost bool, deadline time.Time, progress *atomic.Int64, stop <-chan struct{}) guestRun {
	r := guestRun{byHead: map[uint16]int{}}
	seen := map[uint32]bool{}
	var used []usedElem
	for r.frames < want && time.Now().Before(deadline) {
		select {
		case <-stop:
			return r
		default:
		}
		if rx.Poll() == 0 {
			rx.Wait(5 * time.Millisecond)
		}
		used = g.used(used[:0])
		for _, u := range used {
			if u.len == 0 {
				r.zeroLen++
				r.byHead[u.head]++
				if repost {
					g.postBuf(int(u.head))
				}
				continue
			}
			b := g.at(bufGPA(int(u.head)), int(u.len))
			if b[10] != 1 || !bytes.Equal(b[:10], make([]byte, 10)) {
				r.badHeader++
			}
			m, ok := traffic.ParseMarker(b[12:])
			switch {
			case !ok || m.Tag != tag:
				r.unmarked++
			case seen[m.Seq]:
				r.dups++
			default:
				seen[m.Seq] = true
			}
			r.frames++
			if repost {
				g.postBuf(int(u.head))
			}
		}
		progress.Store(int64(r.frames))
	}
	return r
}

func newSender(t *testing.T, topo *hostnet.Topology) *traffic.Sender {
	t.Helper()
	sender, err := traffic.NewSender(topo.WireNS, topo.Wire)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sender.Close() })
	return sender
}

// send sends count frames tagged tag to queue q in bursts the guest can
// hold, waiting for each to arrive.
func send(t *testing.T, topo *hostnet.Topology, sender *traffic.Sender, q int, tag uint16, seq0, count, size int, progress *atomic.Int64, deadline time.Time) {
	t.Helper()
	spec := traffic.FrameSpec{Dst: topo.UplinkMAC, Src: topo.WireMAC, Size: size, Tag: tag}
	base := progress.Load()
	for seq := 0; seq < count; seq += 128 {
		n := min(128, count-seq)
		if err := sender.Send(spec, q, uint32(seq0+seq), n); err != nil {
			t.Fatal(err)
		}
		for progress.Load()-base < int64(seq+n) && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
}

// Frames redirected into a socket whose UMEM is guest memory land in the
// guest's own RX buffers, header first, each once: exact counts, small and
// full-size frames, many times round the 256 buffers.
func TestIntegrationGuestRX(t *testing.T) {
	topo := testnet.Topology(t, 4)
	xsks := redirectByQueue(t, topo)
	g := newTestGuest(t)
	for i := range gRingSize {
		g.postBuf(i)
	}
	rx := openGuestRX(t, topo, g, 1)
	if err := rx.Register(xsks, 1); err != nil {
		t.Fatal(err)
	}
	const count = 3000
	deadline := time.Now().Add(20 * time.Second)
	progress := new(atomic.Int64)
	done := make(chan guestRun, 1)
	sender := newSender(t, topo)
	go func() { done <- drive(g, rx, 1, 2*count, true, deadline, progress, nil) }()
	send(t, topo, sender, 1, 1, 0, count, 100, progress, deadline)
	send(t, topo, sender, 1, 1, count, count, 1514, progress, deadline) // full size for the veth's MTU
	r := <-done
	st := rx.Stats()
	t.Logf("driver %+v; stats %+v", r, st)
	if r.frames != 2*count || r.badHeader+r.unmarked+r.dups+r.zeroLen != 0 {
		t.Errorf("guest got %d frames (%d bad headers, %d unmarked, %d duplicates, %d empty), want %d", r.frames, r.badHeader, r.unmarked, r.dups, r.zeroLen, 2*count)
	}
	if st.Delivered != 2*count || st.KernelDropped+st.FillRingEmpty+st.BadCompletions+st.Moved+st.RefusedChain+st.RefusedTiny+st.RefusedOutside+st.RefusedOverlap != 0 || st.QueueBroken != nil {
		t.Errorf("stats %+v", st)
	}
	if st.Notified == 0 || st.Batches > st.Delivered {
		t.Errorf("%d batches, %d notifications for %d frames", st.Batches, st.Notified, st.Delivered)
	}
}

// A hostile guest's buffers (overlapping, reposted while in flight, tiny,
// at the very start of a region, device-readable, then one outside guest
// memory) are refused and counted, one by one; its good buffers still get
// their frames, a frame longer than its buffers is dropped and counted,
// and another VM on another queue gets every one of its frames throughout.
func TestIntegrationGuestRXHostile(t *testing.T) {
	topo := testnet.Topology(t, 4)
	xsks := redirectByQueue(t, topo)
	sender := newSender(t, topo)

	good := newTestGuest(t)
	for i := range gRingSize {
		good.postBuf(i)
	}
	grx := openGuestRX(t, topo, good, 2)
	if err := grx.Register(xsks, 2); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	gprog := new(atomic.Int64)
	gdone := make(chan guestRun, 1)
	go func() { gdone <- drive(good, grx, 2, 2000, true, deadline, gprog, nil) }()

	h := newTestGuest(t)
	const goodBufs = 64
	for i := range goodBufs {
		h.postBuf(i)
	}
	const W = 2                            // VIRTQ_DESC_F_WRITE
	h.post(64, bufGPA(0)+100, gBufSize, W) // overlaps buffer 0, in flight
	h.post(65, bufGPA(0), gBufSize, W)     // buffer 0 reposted while in flight
	h.post(66, bufGPA(66), 500, W)         // tiny
	h.post(67, gR1GPA+16, gBufSize, W)     // no room for the chunk in its region
	h.post(68, bufGPA(68), gBufSize, 0)    // device-readable
	h.post(69, bufGPA(69), 1<<20, W)       // huge but inside memory: fine, 1036 bytes used
	hrx, err := OpenGuestRX(GuestRXOptions{NetNS: topo.HostNS, Ifname: topo.Uplink, Queue: 1,
		View: h.view, VQ: h.vq, HeaderLen: 12, BufLen: 1036, RingSize: gRingSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hrx.Close(false) })
	if err := hrx.Register(xsks, 1); err != nil {
		t.Fatal(err)
	}
	st := hrx.Stats()
	if st.Posted != goodBufs+1 || st.RefusedOverlap != 2 || st.RefusedTiny != 1 || st.RefusedOutside != 1 || st.RefusedChain != 1 {
		t.Errorf("hostile buffers: stats %+v, want 65 posted, 2 overlapping, 1 tiny, 1 outside, 1 chain refused", st)
	}
	hprog := new(atomic.Int64)
	hdone := make(chan guestRun, 1)
	go func() { hdone <- drive(h, hrx, 1, goodBufs+1, false, deadline, hprog, nil) }()
	send(t, topo, sender, 1, 1, 0, goodBufs+1, 1000, hprog, deadline)
	send(t, topo, sender, 2, 2, 0, 1000, 300, gprog, deadline)
	hr := <-hdone
	if hr.frames != goodBufs+1 || hr.zeroLen != 5 || hr.badHeader+hr.unmarked+hr.dups != 0 {
		t.Errorf("hostile guest: %+v, want %d frames and 5 refused buffers back", hr, goodBufs+1)
	}
	for head := uint16(64); head <= 68; head++ {
		if hr.byHead[head] != 1 {
			t.Errorf("refused buffer %d returned %d times, want once", head, hr.byHead[head])
		}
	}

	// Larger than its 1036-byte buffers: the kernel drops it, counted.
	h.postBuf(0)
	hrx.Poll()
	if err := sender.Send(traffic.FrameSpec{Dst: topo.UplinkMAC, Src: topo.WireMAC, Size: 1200, Tag: 1}, 1, 9999, 1); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(2 * time.Second); hrx.Stats().KernelDropped != 1 && time.Now().Before(end); {
		time.Sleep(5 * time.Millisecond)
	}
	if st := hrx.Stats(); st.KernelDropped != 1 || st.Delivered != goodBufs+1 {
		t.Errorf("oversized frame: stats %+v, want 1 dropped by the kernel", st)
	}

	// A buffer outside guest memory breaks the hostile queue; nothing else.
	h.post(70, 0x40000000, gBufSize, W)
	hrx.Poll()
	if st := hrx.Stats(); st.QueueBroken == nil {
		t.Errorf("buffer outside guest memory: queue not broken, stats %+v", st)
	} else {
		t.Logf("hostile queue broken: %v", st.QueueBroken)
	}
	hrx.Poll()
	send(t, topo, sender, 2, 2, 1000, 1000, 1514, gprog, deadline)
	gr := <-gdone
	if gr.frames != 2000 || gr.badHeader+gr.unmarked+gr.dups+gr.zeroLen != 0 {
		t.Errorf("other VM: %+v, want 2000 frames", gr)
	}
	if st := grx.Stats(); st.Delivered != 2000 || st.KernelDropped+st.FillRingEmpty != 0 {
		t.Errorf("other VM: stats %+v", st)
	}
}

// The memory table changes under traffic (the socket is closed before the
// old view goes, buffers in flight come back empty), then the front-end
// disconnects under traffic: once Close returns, not one byte of guest
// memory changes although frames keep coming; after a reconnect over a
// fresh device state the guest gets exact counts again.
func TestIntegrationGuestRXRemapDisconnect(t *testing.T) {
	topo := testnet.Topology(t, 4)
	xsks := redirectByQueue(t, topo)
	g := newTestGuest(t)
	for i := range gRingSize {
		g.postBuf(i)
	}
	rx := openGuestRX(t, topo, g, 1)
	if err := rx.Register(xsks, 1); err != nil {
		t.Fatal(err)
	}
	// Unpaced traffic from a goroutine until the end.
	stopSend := make(chan struct{})
	sent := make(chan error, 1)
	sender := newSender(t, topo)
	go func() {
		spec := traffic.FrameSpec{Dst: topo.UplinkMAC, Src: topo.WireMAC, Size: 200, Tag: 1}
		for seq := uint32(0); ; seq += 64 {
			select {
			case <-stopSend:
				sent <- nil
				return
			default:
			}
			if err := sender.Send(spec, 1, seq, 64); err != nil {
				sent <- err
				return
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()
	stopped := false
	stopTraffic := func() {
		if !stopped {
			stopped = true
			close(stopSend)
			if err := <-sent; err != nil {
				t.Error(err)
			}
		}
	}
	t.Cleanup(stopTraffic)

	phase := func(rx *GuestRX) guestRun {
		stop := make(chan struct{})
		time.AfterFunc(300*time.Millisecond, func() { close(stop) })
		return drive(g, rx, 1, 1<<30, true, time.Now().Add(10*time.Second), new(atomic.Int64), stop)
	}
	r1 := phase(rx)
	// SET_MEM_TABLE: close (buffers in flight back, empty), unmap, map anew.
	if err := rx.Close(true); err != nil {
		t.Fatal(err)
	}
	st1 := rx.Stats()
	g.detach()
	g.attach(g.vq.LastAvail())
	rx2 := openGuestRX(t, topo, g, 1)
	if err := rx2.Register(xsks, 1); err != nil {
		t.Fatal(err)
	}
	r2 := phase(rx2)
	st2 := rx2.Stats()
	t.Logf("before the change: %d frames, stats %+v", r1.frames, st1)
	t.Logf("after: %d frames (%d empty), stats %+v", r2.frames, r2.zeroLen, st2)
	if r1.frames == 0 || r2.frames == 0 {
		t.Errorf("frames before/after the memory-table change: %d/%d, want some in both", r1.frames, r2.frames)
	}
	if uint64(r1.frames+r2.frames) > st1.Delivered+st2.Delivered || r1.badHeader+r2.badHeader+r1.unmarked+r2.unmarked != 0 {
		t.Errorf("driver saw %d+%d frames (%d+%d bad headers), device delivered %d+%d", r1.frames, r2.frames, r1.badHeader, r2.badHeader, st1.Delivered, st2.Delivered)
	}
	if st1.ReturnedOnClose == 0 || uint64(r2.zeroLen) != st1.ReturnedOnClose {
		t.Errorf("%d buffers returned at the change, driver saw %d empty", st1.ReturnedOnClose, r2.zeroLen)
	}
	if st1.BadCompletions+st2.BadCompletions != 0 || st2.QueueBroken != nil {
		t.Errorf("bad completions or broken queue: %+v / %+v", st1, st2)
	}

	// Disconnect with every buffer empty in the kernel's hands (traffic
	// stopped and drained first, else they are all full and the check
	// proves nothing), then frames keep coming: after Close, guest memory
	// stays as it is.
	stopTraffic()
	drain := make(chan struct{})
	time.AfterFunc(100*time.Millisecond, func() { close(drain) })
	drive(g, rx2, 1, 1<<30, true, time.Now().Add(5*time.Second), new(atomic.Int64), drain)
	rx2.Poll()
	if n := rx2.InFlight(); n != gRingSize {
		t.Fatalf("%d empty buffers in the kernel's hands at the disconnect, want %d", n, gRingSize)
	}
	if err := rx2.Close(false); err != nil {
		t.Fatal(err)
	}
	snap := [2][]byte{bytes.Clone(g.mem[0]), bytes.Clone(g.mem[1])}
	if err := sender.Send(traffic.FrameSpec{Dst: topo.UplinkMAC, Src: topo.WireMAC, Size: 200, Tag: 1}, 1, 1<<20, 500); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	for i := range snap {
		if !bytes.Equal(snap[i], g.mem[i]) {
			n := 0
			for j := range snap[i] {
				if snap[i][j] != g.mem[i][j] {
					n++
				}
			}
			t.Errorf("guest memory file %d: %d bytes changed after the socket was closed", i, n)
		}
	}
	g.detach()

	// Reconnect: the driver resets its rings, the device maps anew.
	clear(g.mem[0][gAvail : gUsed+4+8*gRingSize+2])
	g.availIdx, g.usedSeen = 0, 0
	for i := range gRingSize {
		g.postBuf(i)
	}
	g.attach(0)
	rx3 := openGuestRX(t, topo, g, 1)
	if err := rx3.Register(xsks, 1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	progress := new(atomic.Int64)
	done := make(chan guestRun, 1)
	go func() { done <- drive(g, rx3, 7, 1000, true, deadline, progress, nil) }()
	send(t, topo, sender, 1, 7, 0, 1000, 800, progress, deadline)
	if r := <-done; r.frames != 1000 || r.unmarked+r.dups+r.badHeader+r.zeroLen != 0 {
		t.Errorf("after the reconnect: %+v, want 1000 frames", r)
	}
}
