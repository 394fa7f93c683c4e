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
