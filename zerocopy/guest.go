package zerocopy

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/vhost"
)

// Defaults of GuestRXOptions.
const (
	DefaultGuestRing   = 512
	DefaultGuestBufLen = 1536
	// MaxGuestBufLen is the largest part of a guest buffer used: a chunk
	// (the buffer's last bytes plus the kernel's headroom in front) must fit
	// in a page.
	MaxGuestBufLen = 4096 - RXHeadroom + 12
)

// offsetShift is XSK_UNALIGNED_BUF_OFFSET_SHIFT: in unaligned mode an RX
// descriptor's address is the chunk's address in the low 48 bits and the
// packet's offset in the chunk in the high 16.
const offsetShift = 48

// GuestRXOptions configure OpenGuestRX.
type GuestRXOptions struct {
	NetNS   string // namespace of the interface ("" the caller's)
	Ifname  string
	Ifindex int // if 0, Ifname is looked up
	Queue   int // the VM's dedicated RX queue

	// View is the guest memory, contiguous (vhost.MemoryTable.MapContiguous);
	// it becomes the UMEM. VQ is the guest's RX virtqueue, over the same
	// memory table. Both stay the caller's; Close the GuestRX before either.
	View *vhost.GuestView
	VQ   *vhost.Virtqueue
	// HeaderLen is the virtio-net header's length: 12 (VIRTIO_F_VERSION_1
	// or MRG_RXBUF, num_buffers set to 1) or 10.
	HeaderLen int
	// BufLen is the part of each guest buffer used, header included: the
	// smallest buffer accepted, and HeaderLen less the largest frame
	// delivered (larger frames are dropped by the kernel and counted in
	// KernelDropped). Default DefaultGuestBufLen (frames up to 1524 bytes).
	BufLen int
	// RingSize is the number of entries of the RX ring (the fill ring has
	// twice as many), and the most guest buffers in the kernel's hands.
	RingSize int
	// Reserve is how many guest buffers to hold back from the kernel for
	// Inject (0: none; at most RingSize/4).
	Reserve int
	// Notify is called once per Poll that published used entries the
	// driver wants to hear about (signal the call eventfd).
	Notify func()
}

// GuestRXStats are a GuestRX's counters. Refused* buffers were returned to
// the guest unused (a used entry of length 0).
type GuestRXStats struct {
	Posted    uint64 // guest buffers given to the kernel
	Delivered uint64 // frames written into guest buffers and published
	Injected  uint64 // frames copied in by Inject
	Batches   uint64 // Polls that published used entries
	Notified  uint64 // of which asked to notify the driver
	// Starved counts Polls that found the guest had posted no buffer while
	// fewer than a quarter of RingSize were in the kernel's hands.
	Starved         uint64
	RefusedChain    uint64 // readable descriptors, or not exactly one writable one
	RefusedTiny     uint64 // shorter than BufLen
	RefusedOutside  uint64 // not inside one region, or too close to its start for the chunk
	RefusedOverlap  uint64 // overlaps a buffer in flight (reposted, or aliased)
	BadCompletions  uint64 // RX descriptors matching no buffer in flight (never expected)
	Moved           uint64 // packets not where the header needs them, moved in the buffer
	ReturnedOnClose uint64 // in flight at Close, returned unused
	QueueBroken     error  `json:"-"` // the driver corrupted the virtqueue: no more buffers taken

	// From the kernel (XDP_STATISTICS).
	KernelDropped   uint64 // frames longer than BufLen-HeaderLen, among others
	FillRingEmpty   uint64 // frames that found no guest buffer
	RXRingFull      uint64
	InvalidFillDesc uint64
}

type reserved struct {
	head uint16
	buf  []byte // its one writable descriptor
}

type inflight struct {
	off  uint64 // offset of the guest buffer in the view
	head uint16
}

// GuestRX delivers the frames an XDP program redirects to one queue
// straight into a guest's RX buffers: an AF_XDP socket whose UMEM is the
// guest's memory (see the package doc, "Zero-copy into guest memory").
// It is not safe for concurrent use; Close must not race with Poll.
type GuestRX struct {
	fd      int
	ifindex int
	queue   int
	maps    [][]byte
	fill    FillQueue
	rx      RXQueue
	view    *vhost.GuestView
	mem     []byte
	vq      *vhost.Virtqueue
	notify  func()
	hdr     uint64
	bufLen  uint64
	chunk   uint64
	ring    int
	lowMark int

	// inflight holds the buffers in the kernel's hands by granule
	// (offset / bufLen): buffers in flight never overlap, so each granule
	// holds at most one start, and a buffer can overlap only those starting
	// in its granule or the two beside it.
	inflight granTable
	held     int

	// reserve holds a few guest buffers back from the kernel for Inject
	// (frames that do not come through the socket: the uplink's
	// broadcasts); refill keeps it stocked first.
	reserve    []reserved
	reserveMax int

	chain vhost.Chain
	addrs []uint64
	descs []Desc
	st    GuestRXStats
}

// OpenGuestRX checks the options, registers the guest memory as a UMEM in
// unaligned-chunk mode and binds a socket (copy mode: the kernel copies
// each frame once, into the guest buffer) to the queue, with no buffers
// yet: Poll takes them from the virtqueue. Put FD into the XSKMAP after.
func OpenGuestRX(o GuestRXOptions) (_ *GuestRX, err error) {
	if o.View == nil || len(o.View.Bytes()) == 0 || o.VQ == nil {
		return nil, errors.New("zero-copy guest RX: no guest memory view or RX virtqueue")
	}
	if o.HeaderLen != 10 && o.HeaderLen != 12 {
		return nil, fmt.Errorf("zero-copy guest RX: virtio-net header of %d bytes, want 10 or 12", o.HeaderLen)
	}
	if o.BufLen == 0 {
		o.BufLen = DefaultGuestBufLen
	}
	if o.BufLen < o.HeaderLen+MinFrame || o.BufLen > MaxGuestBufLen {
		return nil, fmt.Errorf("zero-copy guest RX: buffer length %d, want %d to %d", o.BufLen, o.HeaderLen+MinFrame, MaxGuestBufLen)
	}
	if o.RingSize == 0 {
		o.RingSize = DefaultGuestRing
	}
	if o.RingSize < 1 || o.RingSize&(o.RingSize-1) != 0 || o.RingSize > 1<<16 {
		return nil, fmt.Errorf("zero-copy guest RX: ring size %d, want a power of two up to %d", o.RingSize, 1<<16)
	}
	if o.Reserve < 0 || o.Reserve > o.RingSize/4 {
		return nil, fmt.Errorf("zero-copy guest RX: reserve of %d buffers, want 0 to %d", o.Reserve, o.RingSize/4)
	}
	if o.Ifindex == 0 && o.Ifname == "" {
		return nil, errors.New("zero-copy guest RX: no interface (Ifindex or Ifname)")
	}
	g := &GuestRX{
		fd: -1, queue: o.Queue, view: o.View, mem: o.View.Bytes(), vq: o.VQ, notify: o.Notify,
		hdr: uint64(o.HeaderLen), bufLen: uint64(o.BufLen), ring: o.RingSize,
		lowMark:    max(1, o.RingSize/4),
		inflight:   newGranTable(o.RingSize),
		reserveMax: o.Reserve,
		reserve:    make([]reserved, 0, o.Reserve),
		addrs:      make([]uint64, o.RingSize),
		descs:      make([]Desc, o.RingSize),
	}
	// The chunk ends where the used part of the guest buffer ends; the
	// kernel writes a packet at chunk + headroom + XDP_PACKET_HEADROOM,
	// which is the buffer's start plus the header.
	g.chunk = max(MinFrameSize, g.bufLen-g.hdr+RXHeadroom)
	if g.chunk > uint64(unix.Getpagesize()) {
		return nil, fmt.Errorf("zero-copy guest RX: buffer length %d needs chunks of %d bytes, more than a page", o.BufLen, g.chunk)
	}
	headroom := g.chunk - RXHeadroom - (g.bufLen - g.hdr)
	defer func() {
		if err != nil {
			g.closeSocket()
		}
	}()
	g.fd, g.ifindex, err = openXSK(o.NetNS, o.Ifindex, o.Ifname)
	if err != nil {
		return nil, fmt.Errorf("zero-copy guest RX on %s queue %d: %w", o.Ifname, o.Queue, err)
	}
	if err := registerGuestUMEM(g.fd, g.mem, uint32(g.chunk), uint32(headroom)); err != nil {
		return nil, fmt.Errorf("zero-copy guest RX: register %d bytes of guest memory as UMEM (unaligned chunks of %d): %w", len(g.mem), g.chunk, err)
	}
	n := o.RingSize
	for _, r := range []struct{ opt, size int }{
		{unix.XDP_UMEM_FILL_RING, 2 * n}, {unix.XDP_UMEM_COMPLETION_RING, 1}, {unix.XDP_RX_RING, n},
	} {
		if err := unix.SetsockoptInt(g.fd, unix.SOL_XDP, r.opt, r.size); err != nil {
			return nil, fmt.Errorf("zero-copy guest RX: ring size %d: %w", r.size, err)
		}
	}
	off, err := mmapOffsets(g.fd)
	if err != nil {
		return nil, fmt.Errorf("zero-copy guest RX: ring offsets: %w", err)
	}
	m, err := g.mmap(unix.XDP_UMEM_PGOFF_FILL_RING, off.Fr, uint32(2*n), addrSize)
	if err != nil {
		return nil, err
	}
	g.fill.attach(m, off.Fr, uint32(2*n))
	g.fill.addrs = addrRing(m, off.Fr, uint32(2*n))
	if m, err = g.mmap(unix.XDP_PGOFF_RX_RING, off.Rx, uint32(n), descSize); err != nil {
		return nil, err
	}
	g.rx.attach(m, off.Rx, uint32(n))
	g.rx.descs = descRing(m, off.Rx, uint32(n))
	g.refill()
	sa := &unix.SockaddrXDP{Flags: unix.XDP_COPY, Ifindex: uint32(g.ifindex), QueueID: uint32(o.Queue)}
	err = unix.Bind(g.fd, sa)
	for deadline := time.Now().Add(2 * time.Second); errors.Is(err, unix.EBUSY) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond) // a closed socket's queue is released in deferred work
		err = unix.Bind(g.fd, sa)
	}
	if err != nil {
		return nil, fmt.Errorf("zero-copy guest RX: bind to ifindex %d queue %d: %w", g.ifindex, o.Queue, err)
	}
	return g, nil
}

func (g *GuestRX) mmap(pgoff int64, off unix.XDPRingOffset, entries uint32, entry int) ([]byte, error) {
	length := off.Desc + uint64(entries)*uint64(entry)
	for _, o := range []uint64{off.Producer, off.Consumer, off.Flags} {
		if o+4 > length || o%4 != 0 {
			return nil, fmt.Errorf("zero-copy guest RX: ring offsets %+v outside the mapping", off)
		}
	}
	m, err := unix.Mmap(g.fd, pgoff, int(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("zero-copy guest RX: map ring: %w", err)
	}
	g.maps = append(g.maps, m)
	return m, nil
}

// FD is the socket, for the XSKMAP.
func (g *GuestRX) FD() int { return g.fd }

// Register puts the socket into the XSKMAP m at key.
func (g *GuestRX) Register(m *ebpf.Map, key uint32) error {
	if err := m.Update(key, uint32(g.fd), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("register zero-copy guest RX socket in XSKMAP at %d: %w", key, err)
	}
	return nil
}

// InFlight is the number of guest buffers in the kernel's hands.
func (g *GuestRX) InFlight() int { return g.held }

// Hungry reports whether the kernel holds fewer guest buffers than it could
// (ring and reserve not full): the guest's next buffers should be taken
// soon. The guest posts RX buffers without a kick (RX notifications are
// off), so the caller polls again within a short time while Hungry.
func (g *GuestRX) Hungry() bool { return g.held+len(g.reserve) < g.ring }

// refill pops guest buffers, checks them and posts them to the fill ring,
// in one batch. Refused buffers are returned as used entries of length 0.
func (g *GuestRX) refill() (refused int) {
	want := min(g.ring-g.held, g.fill.Free())
	n := 0
	for (n < want || len(g.reserve) < g.reserveMax) && g.st.QueueBroken == nil {
		ok, err := g.vq.Pop(&g.chain)
		if err != nil {
			g.st.QueueBroken = err
			break
		}
		if !ok {
			if g.held+n < g.lowMark {
				g.st.Starved++
			}
			break
		}
		if len(g.reserve) < g.reserveMax && len(g.chain.Readable) == 0 && len(g.chain.Writable) == 1 && uint64(len(g.chain.Writable[0])) >= g.bufLen {
			g.reserve = append(g.reserve, reserved{g.chain.Head, g.chain.Writable[0]})
			continue
		}
		var addr uint64
		var bad *uint64
		if n < want {
			addr, bad = g.check(&g.chain)
		} else {
			bad = &g.st.RefusedChain // the fill ring is full and it cannot be held back
		}
		if bad != nil {
			*bad++
			refused++
			if err := g.vq.PushUsed(g.chain.Head, 0); err != nil {
				g.st.QueueBroken = err
			}
			continue
		}
		g.addrs[n] = addr
		n++
	}
	if n > 0 {
		g.fill.Produce(g.addrs[:n])
		g.held += n
		g.st.Posted += uint64(n)
	}
	return refused
}

// check validates a chain as a guest RX buffer and records it in flight;
// it returns the fill address, or the counter of the reason it refused.
func (g *GuestRX) check(c *vhost.Chain) (uint64, *uint64) {
	if len(c.Readable) != 0 || len(c.Writable) != 1 {
		return 0, &g.st.RefusedChain
	}
	buf := c.Writable[0]
	if uint64(len(buf)) < g.bufLen {
		return 0, &g.st.RefusedTiny
	}
	off, lo, _, ok := g.view.Locate(buf)
	// The chunk starts chunk-bufLen bytes before the buffer: still in the
	// region (the kernel checks only the UMEM's bounds, and does not write
	// there in copy mode, but a region's neighbour in the view is another
	// file).
	if !ok || off < lo+g.chunk-g.bufLen {
		return 0, &g.st.RefusedOutside
	}
	gr := off / g.bufLen
	for _, k := range [3]uint64{gr - 1, gr, gr + 1} {
		if e, ok := g.inflight.get(k); ok && e.off < off+g.bufLen && off < e.off+g.bufLen {
			return 0, &g.st.RefusedOverlap
		}
	}
	g.inflight.put(gr, inflight{off: off, head: c.Head})
	return off + g.bufLen - g.chunk, nil
}

// Poll takes the buffers the guest posted (to the fill ring), and the
// frames the kernel wrote into guest buffers: writes each one's virtio-net
// header, pushes it as a used entry, publishes them all with one store and
// notifies the driver once. It returns how many frames it delivered.
func (g *GuestRX) Poll() int {
	if g.fd < 0 {
		return 0
	}
	k := g.rx.Consume(g.descs)
	for _, d := range g.descs[:k] {
		g.complete(d)
	}
	g.held -= k
	refused := g.refill()
	if k+refused > 0 {
		g.publish()
	}
	return k
}

func (g *GuestRX) complete(d Desc) {
	base := d.Addr & (1<<offsetShift - 1)
	data := base + d.Addr>>offsetShift
	off := base + g.chunk - g.bufLen
	gr := off / g.bufLen
	e, ok := g.inflight.get(gr)
	if !ok || e.off != off {
		g.st.BadCompletions++
		return
	}
	g.inflight.del(gr)
	n := uint64(d.Len)
	var written uint32
	switch {
	case n > g.bufLen-g.hdr || data < base || data+n > off+g.bufLen:
		g.st.BadCompletions++ // cannot happen: the kernel keeps to the chunk
	default:
		if data != off+g.hdr {
			g.st.Moved++
			copy(g.mem[off+g.hdr:off+g.hdr+n], g.mem[data:data+n])
		}
		h := g.mem[off : off+g.hdr : off+g.hdr]
		clear(h)
		if g.hdr == 12 {
			h[10] = 1 // num_buffers
		}
		written = uint32(g.hdr + n)
		g.st.Delivered++
	}
	if err := g.vq.PushUsed(e.head, written); err != nil && g.st.QueueBroken == nil {
		g.st.QueueBroken = err
	}
}

func (g *GuestRX) publish() {
	g.st.Batches++
	if g.vq.PublishUsed() {
		g.st.Notified++
		if g.notify != nil {
			g.notify()
		}
	}
}

// Wait sleeps until the kernel has received something, or timeout passes.
func (g *GuestRX) Wait(timeout time.Duration) error {
	if g.fd < 0 || g.rx.Available() > 0 {
		return nil
	}
	t := unix.NsecToTimespec(int64(timeout))
	pfd := []unix.PollFd{{Fd: int32(g.fd), Events: unix.POLLIN}}
	if _, err := unix.Ppoll(pfd, &t, nil); err != nil && err != unix.EINTR {
		return fmt.Errorf("poll zero-copy guest RX socket: %w", err)
	}
	return nil
}

// Stats returns the counters, with the kernel's.
func (g *GuestRX) Stats() GuestRXStats {
	st := g.st
	if g.fd >= 0 {
		if k, err := xdpStatistics(g.fd); err == nil {
			st.KernelDropped, st.FillRingEmpty = k.Rx_dropped, k.Rx_fill_ring_empty_descs
			st.RXRingFull, st.InvalidFillDesc = k.Rx_ring_full, k.Rx_invalid_descs
		}
	}
	return st
}

// closeSocket unmaps the rings and closes the socket. The kernel unbinds
// the socket (and waits for receivers in flight, synchronize_net) in the
// close call itself, so once it returns nothing writes into the UMEM again.
func (g *GuestRX) closeSocket() error {
	var errs []error
	for _, m := range g.maps {
		if err := unix.Munmap(m); err != nil {
			errs = append(errs, fmt.Errorf("unmap ring: %w", err))
		}
	}
	g.maps = nil
	g.fill, g.rx = FillQueue{}, RXQueue{}
	if g.fd >= 0 {
		if err := unix.Close(g.fd); err != nil {
			errs = append(errs, fmt.Errorf("close AF_XDP socket: %w", err))
		}
		g.fd = -1
	}
	return errors.Join(errs...)
}

// Close closes the socket first, so the kernel can no longer write into
// the guest memory; then, if giveBack, it returns the buffers still in
// flight to the guest as used entries of length 0 (on a memory-table change
// or a device stop; not when the front-end is gone). Only after Close may
// the caller unmap the view or the memory table. Close is idempotent.
func (g *GuestRX) Close(giveBack bool) error {
	err := g.closeSocket()
	if giveBack && g.inflight.len() > 0 && g.st.QueueBroken == nil {
		failed := false
		g.inflight.each(func(_ uint64, e inflight) {
			if failed {
				return
			}
			g.st.ReturnedOnClose++
			failed = g.vq.PushUsed(e.head, 0) != nil
		})
		g.publish()
	}
	if giveBack && g.st.QueueBroken == nil {
		for _, r := range g.reserve {
			g.st.ReturnedOnClose++
			if g.vq.PushUsed(r.head, 0) != nil {
				break
			}
		}
		if len(g.reserve) > 0 {
			g.publish()
		}
	}
	g.reserve = g.reserve[:0]
	g.inflight.clear()
	g.held = 0
	return err
}

// Inject copies frames into guest buffers taken from the same virtqueue
// (for frames that do not come through the socket, such as the uplink's
// broadcasts), publishes them with one store, notifies at most once, and
// returns how many it placed. It stops at the first frame the guest has no
// buffer for; a buffer too small for its frame goes back empty, counted in
// RefusedTiny.
func (g *GuestRX) Inject(frames [][]byte) int {
	placed := 0
	for _, f := range frames {
		if len(g.reserve) == 0 {
			g.refill() // the reserve is stocked first
		}
		if len(g.reserve) == 0 || g.st.QueueBroken != nil {
			break
		}
		r := g.reserve[len(g.reserve)-1]
		g.reserve = g.reserve[:len(g.reserve)-1]
		written := uint32(0)
		if uint64(len(r.buf)) >= g.hdr+uint64(len(f)) {
			h := r.buf[:g.hdr]
			clear(h)
			if g.hdr == 12 {
				h[10] = 1
			}
			copy(r.buf[g.hdr:], f)
			written = uint32(g.hdr) + uint32(len(f))
			placed++
		} else {
			g.st.RefusedTiny++
		}
		if err := g.vq.PushUsed(r.head, written); err != nil {
			g.st.QueueBroken = err
			break
		}
	}
	if len(frames) > 0 {
		g.publish()
	}
	g.st.Injected += uint64(placed)
	return placed
}
