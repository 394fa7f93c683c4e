package zerocopy

import (
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Desc is one entry of the RX and TX rings (the kernel's struct xdp_desc):
// a frame at UMEM offset Addr, Len bytes long. In aligned mode, which this
// package uses, Addr points at the packet data, so it is the frame's base
// plus an offset (the UMEM headroom, and on RX XDP_PACKET_HEADROOM too).
type Desc struct {
	Addr    uint64
	Len     uint32
	Options uint32 // XDP_PKT_CONTD for multi-buffer frames (not requested here)
}

// The four ring types below wrap the rings the kernel shares with this
// process. Each side of a ring owns one index: the producer writes entries
// and then publishes its producer index, the consumer reads entries and then
// publishes its consumer index. This side keeps cached copies of both, reads
// the kernel's index (sync/atomic load: acquire) only when the cache says
// there is not enough, and publishes its own once per batch (sync/atomic
// store: release), so a batch costs two atomic operations whatever its size.
// (In Go's memory model sync/atomic operations are sequentially consistent,
// which is at least the acquire/release the kernel pairs with its
// smp_load_acquire/smp_store_release on the same words.)
//
// The ring types are not safe for concurrent use: a ring has one user-space
// producer or consumer, so one goroutine drives it (or callers serialise).

// ring is what the four ring types share.
type ring struct {
	producer *uint32 // shared with the kernel
	consumer *uint32 // shared with the kernel
	flags    *uint32 // shared with the kernel: XDP_RING_NEED_WAKEUP
	size     uint32  // entries, a power of two
	mask     uint32
	// This side's view: its own index (not yet published if it differs
	// from the shared word) and the other side's index as last read.
	cachedProd uint32
	cachedCons uint32
}

// attach points r at a ring of size entries mapped at m.
func (r *ring) attach(m []byte, off unix.XDPRingOffset, size uint32) {
	r.producer, r.consumer, r.flags = ringWords(m, off)
	r.size, r.mask = size, size-1
	r.cachedProd = atomic.LoadUint32(r.producer)
	r.cachedCons = atomic.LoadUint32(r.consumer)
}

// needWakeup reports whether the kernel asked to be woken (XDP_RING_NEED_WAKEUP;
// set only on sockets bound with XDP_USE_NEED_WAKEUP).
func (r *ring) needWakeup() bool {
	return atomic.LoadUint32(r.flags)&unix.XDP_RING_NEED_WAKEUP != 0
}

// Producer side (fill, TX).

// free returns the free entries, reading the kernel's consumer index only if
// the cached one shows fewer than want.
func (r *ring) free(want uint32) uint32 {
	f := r.size - (r.cachedProd - r.cachedCons)
	if f < want {
		r.cachedCons = atomic.LoadUint32(r.consumer)
		f = r.size - (r.cachedProd - r.cachedCons)
	}
	return f
}

// publish makes the entries written so far visible to the kernel.
func (r *ring) publish() { atomic.StoreUint32(r.producer, r.cachedProd) }

// Consumer side (RX, completion).

// avail returns the entries ready to read, reading the kernel's producer
// index only if the cached one shows fewer than want.
func (r *ring) avail(want uint32) uint32 {
	a := r.cachedProd - r.cachedCons
	if a < want {
		r.cachedProd = atomic.LoadUint32(r.producer)
		a = r.cachedProd - r.cachedCons
	}
	return a
}

// release gives the entries read so far back to the kernel.
func (r *ring) release() { atomic.StoreUint32(r.consumer, r.cachedCons) }

// FillQueue is the fill ring: this process hands the kernel free UMEM frames
// (by address) to receive into. Not safe for concurrent use.
type FillQueue struct {
	ring
	addrs []uint64 // the ring's entries, shared with the kernel
}

// Free returns how many addresses Produce would take now.
func (q *FillQueue) Free() int { return int(q.free(q.size)) }

// Len returns how many addresses the kernel has not taken yet (as last seen).
func (q *FillQueue) Len() int { return int(q.cachedProd - atomic.LoadUint32(q.consumer)) }

// Produce writes as many of addrs as fit, publishes them with one store, and
// returns how many it wrote.
func (q *FillQueue) Produce(addrs []uint64) int {
	n := min(uint32(len(addrs)), q.free(uint32(len(addrs))))
	if n == 0 {
		return 0
	}
	i := q.cachedProd & q.mask
	c := uint32(copy(q.addrs[i:], addrs[:n]))
	copy(q.addrs, addrs[c:n])
	q.cachedProd += n
	q.publish()
	return int(n)
}

// NeedWakeup reports whether the kernel asks for a wakeup (poll or
// recvfrom) before it takes more addresses; always false unless the socket
// was bound with NeedWakeup.
func (q *FillQueue) NeedWakeup() bool { return q.needWakeup() }

// RXQueue is the RX ring: the kernel hands this process received frames.
// Not safe for concurrent use.
type RXQueue struct {
	ring
	descs []Desc
}

// Available returns how many descriptors are ready to consume.
func (q *RXQueue) Available() int { return int(q.avail(1)) }

// Consume copies up to len(descs) descriptors out of the ring, gives their
// slots back to the kernel with one store, and returns how many it copied.
// The frames they point to belong to the caller until it returns them to the
// fill ring.
func (q *RXQueue) Consume(descs []Desc) int {
	n := min(uint32(len(descs)), q.avail(uint32(len(descs))))
	if n == 0 {
		return 0
	}
	i := q.cachedCons & q.mask
	c := uint32(copy(descs[:n], q.descs[i:]))
	copy(descs[c:n], q.descs)
	q.cachedCons += n
	q.release()
	return int(n)
}

// TXQueue is the TX ring: this process hands the kernel frames to send.
// Not safe for concurrent use.
type TXQueue struct {
	ring
	descs []Desc
}

// Free returns how many descriptors Produce would take now.
func (q *TXQueue) Free() int { return int(q.free(q.size)) }

// Pending returns how many descriptors the kernel has not taken yet.
func (q *TXQueue) Pending() int { return int(q.cachedProd - atomic.LoadUint32(q.consumer)) }

// Produce writes as many of descs as fit, publishes them with one store and
// returns how many it wrote. The kernel sends them when kicked (sendto).
func (q *TXQueue) Produce(descs []Desc) int {
	n := min(uint32(len(descs)), q.free(uint32(len(descs))))
	if n == 0 {
		return 0
	}
	i := q.cachedProd & q.mask
	c := uint32(copy(q.descs[i:], descs[:n]))
	copy(q.descs, descs[c:n])
	q.cachedProd += n
	q.publish()
	return int(n)
}

// NeedWakeup reports whether the kernel needs a sendto to send what is in
// the ring. On a socket bound without NeedWakeup it is always false, and
// every batch needs a kick. (In copy mode the kernel sets the flag once and
// never clears it: copy mode sends only from sendto and poll.)
func (q *TXQueue) NeedWakeup() bool { return q.needWakeup() }

// CompletionQueue is the completion ring: the kernel hands back the
// addresses of frames it has sent. Not safe for concurrent use.
type CompletionQueue struct {
	ring
	addrs []uint64
}

// Available returns how many addresses are ready to consume.
func (q *CompletionQueue) Available() int { return int(q.avail(1)) }

// Consume copies up to len(addrs) completed addresses out of the ring, gives
// their slots back with one store, and returns how many it copied.
func (q *CompletionQueue) Consume(addrs []uint64) int {
	n := min(uint32(len(addrs)), q.avail(uint32(len(addrs))))
	if n == 0 {
		return 0
	}
	i := q.cachedCons & q.mask
	c := uint32(copy(addrs[:n], q.addrs[i:]))
	copy(addrs[c:n], q.addrs)
	q.cachedCons += n
	q.release()
	return int(n)
}
