package vhost

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Virtio and vhost-user feature bits (as masks) the device may offer.
const (
	FeatureNetMrgRxbuf      = uint64(1) << 15 // VIRTIO_NET_F_MRG_RXBUF
	FeatureNetGuestAnnounce = uint64(1) << 21 // VIRTIO_NET_F_GUEST_ANNOUNCE
	FeatureNetMQ            = uint64(1) << 22 // VIRTIO_NET_F_MQ
	FeatureRingIndirectDesc = uint64(1) << 28 // VIRTIO_RING_F_INDIRECT_DESC
	FeatureRingEventIdx     = uint64(1) << 29 // VIRTIO_RING_F_EVENT_IDX
	FeatureProtocolFeatures = uint64(1) << 30 // VHOST_USER_F_PROTOCOL_FEATURES
	FeatureVersion1         = uint64(1) << 32 // VIRTIO_F_VERSION_1
)

// vhost-user protocol feature bits (as masks) the back-end offers.
const (
	ProtocolFeatureMQ       = uint64(1) << 0 // VHOST_USER_PROTOCOL_F_MQ
	ProtocolFeatureRARP     = uint64(1) << 2 // VHOST_USER_PROTOCOL_F_RARP
	ProtocolFeatureReplyAck = uint64(1) << 3 // VHOST_USER_PROTOCOL_F_REPLY_ACK
)

// MaxQueuePairs bounds NetConfig.QueuePairs (queue indexes are 8 bits in
// SET_VRING_KICK/CALL/ERR).
const MaxQueuePairs = 64

// MaxFrameSize is the largest frame the device moves in either direction,
// without the virtio-net header.
const MaxFrameSize = 65535

// ErrNotReady is returned by Deliver when the queue is not running: no
// front-end, rings not set up, or the queue not enabled.
var ErrNotReady = errors.New("vhost: queue not ready")

// TXHandler receives frames the guest transmitted on queue pair pair. The
// frames may point into guest memory: they are valid only during the call,
// and the guest can change them meanwhile, so treat them as untrusted and
// volatile (copy before validating what must not change). The handler must
// not block: it runs on the connection's kick goroutine, and the control
// plane waits for it. Reading a frame can fault when the front-end shrank
// its memory: the fault panics out of the handler and the device recovers
// it (the queue breaks, the connection closes), so a handler must release
// what it holds (locks) with defer or otherwise survive being unwound.
type TXHandler func(pair int, frames [][]byte)

// NetConfig configures a NetDevice. The zero value is a one-pair device
// dropping everything the guest sends.
type NetConfig struct {
	// QueuePairs is the number of RX/TX queue pairs (0 means 1). With more
	// than one, VIRTIO_NET_F_MQ is offered.
	QueuePairs int
	// TX receives transmitted frames. Nil drops them (counted).
	TX TXHandler
	// TXBatch is the most frames per TX call (0 means 64).
	TXBatch int
	// BusyPoll, when positive, keeps the kick goroutine polling the TX
	// queues for this long after each burst before it sleeps in epoll
	// again: lower latency for a burning CPU. Zero means event-driven only.
	BusyPoll time.Duration
	// Logger receives the device's logs (nil: slog.Default()).
	Logger *slog.Logger
	// RXHandoff, if set, is offered each RX queue when it starts (zero-copy
	// delivery, handoff.go).
	RXHandoff RXHandoff
}

// QueueStats are the counters of one virtqueue.
type QueueStats struct {
	Queue   int    // virtqueue index: RX = 2*pair, TX = 2*pair+1
	Packets uint64 // frames moved
	Bytes   uint64 // bytes of those frames, without virtio-net header
	Drops   uint64 // frames not moved (no guest buffers, not ready, malformed, too large, no TX handler)
	Broken  uint64 // times the driver broke the queue, or its memory faulted
	Calls   uint64 // call eventfd writes (interrupts to the guest)
	Kicks   uint64 // kicks processed
}

type queueCounters struct {
	packets, bytes, drops, broken, calls, kicks atomic.Uint64
}

type usedEntry struct {
	head uint16
	len  uint32
}

// queue is the state of one virtqueue. Configuration fields are written
// under NetDevice.mu (write lock); the data path holds NetDevice.mu (read
// lock) and queue.mu.
type queue struct {
	index int
	tx    bool

	mu sync.Mutex // serializes data-path users of this queue

	num      uint16
	addr     VringAddr
	addrSet  bool
	base     uint16
	kickFD   int
	callFD   int
	errFD    int
	polled   bool // started without a kick fd
	enabled  bool
	vq       *Virtqueue
	reported bool // broken state reported
	stats    queueCounters
	chain    Chain
	used     []usedEntry // RX: the chains of the frame being placed; TX: the batch
	frames   [][]byte    // TX batch
	scratch  [][]byte    // TX gather buffers, one per batch slot
	lb       logBatch    // dirty log marks of the current data-path call
}

func (q *queue) resetConfig() {
	for _, fd := range []*int{&q.kickFD, &q.callFD, &q.errFD} {
		if *fd >= 0 {
			unix.Close(*fd)
		}
		*fd = -1
	}
	q.num, q.addr, q.addrSet, q.base = 0, VringAddr{}, false, 0
	q.polled, q.enabled, q.vq, q.reported = false, false, nil, false
	q.chain.reset()
	clear(q.frames)
	q.lb = logBatch{}
}

var eventOne = [8]byte{1}

// signal writes the call eventfd.
func (q *queue) signal() {
	if q.callFD < 0 {
		return
	}
	// EAGAIN means the counter is saturated: the guest will see it anyway.
	unix.Write(q.callFD, eventOne[:])
	q.stats.calls.Add(1)
}

// checkBroken reports a queue that just broke: counted once, and the error
// eventfd (SET_VRING_ERR) written.
func (q *queue) checkBroken() {
	if q.reported || q.vq == nil || q.vq.Broken() == nil {
		return
	}
	q.reported = true
	q.stats.broken.Add(1)
	if q.errFD >= 0 {
		unix.Write(q.errFD, eventOne[:])
	}
}

// NetDevice is a virtio-net device served over vhost-user: queue pairs
// (RX = 2*pair, TX = 2*pair+1) whose rings live in guest memory. Serve it
// with a Server; feed the guest with Deliver; receive its frames through
// NetConfig.TX. Deliver is safe for concurrent use (calls on the same pair
// are serialized).
type NetDevice struct {
	cfg    NetConfig
	log    *slog.Logger
	pairs  int
	offer  uint64
	queues []*queue

	mu          sync.RWMutex // write: control plane; read: data path
	features    uint64       // acked virtio features
	protocol    uint64       // acked protocol features
	featuresSet bool
	mem         *MemoryTable
	hdrLen      int

	// current connection
	connLog    *slog.Logger
	abort      func()      // closes the connection (after a guest memory fault)
	faulted    atomic.Bool // guest memory faulted: the data path stays out
	sealWarned bool        // a shrinkable region was logged

	// dirty page logging (dirtylog.go)
	dlog          *dirtyLog // SET_LOG_BASE
	logMissed     atomic.Uint64
	logMissWarned atomic.Bool

	// kick goroutine of the current connection
	epfd    int
	stopFD  int
	done    chan struct{}
	polling atomic.Int32 // queues started without a kick fd

	handed []bool // per pair: RX queue handed to cfg.RXHandoff (handoff.go)
}

// NewNetDevice returns a device that no front-end has connected to yet.
func NewNetDevice(cfg NetConfig) (*NetDevice, error) {
	if cfg.QueuePairs == 0 {
		cfg.QueuePairs = 1
	}
	if cfg.QueuePairs < 0 || cfg.QueuePairs > MaxQueuePairs {
		return nil, fmt.Errorf("vhost: QueuePairs %d out of range [1, %d]", cfg.QueuePairs, MaxQueuePairs)
	}
	if cfg.TXBatch == 0 {
		cfg.TXBatch = 64
	}
	if cfg.TXBatch < 0 || cfg.TXBatch > MaxQueueSize {
		return nil, fmt.Errorf("vhost: TXBatch %d out of range [1, %d]", cfg.TXBatch, MaxQueueSize)
	}
	if cfg.BusyPoll < 0 {
		return nil, fmt.Errorf("vhost: negative BusyPoll %v", cfg.BusyPoll)
	}
	d := &NetDevice{
		cfg:   cfg,
		log:   cfg.Logger,
		pairs: cfg.QueuePairs,
		offer: FeatureVersion1 | FeatureNetMrgRxbuf | FeatureRingEventIdx | FeatureRingIndirectDesc | FeatureProtocolFeatures |
			FeatureLogAll | FeatureNetGuestAnnounce,
		epfd:   -1,
		stopFD: -1,
	}
	if d.log == nil {
		d.log = slog.Default()
	}
	if d.pairs > 1 {
		d.offer |= FeatureNetMQ
	}
	for i := range 2 * d.pairs {
		q := &queue{index: i, tx: i%2 == 1, kickFD: -1, callFD: -1, errFD: -1}
		if q.tx {
			q.used = make([]usedEntry, 0, cfg.TXBatch)
			q.frames = make([][]byte, cfg.TXBatch)
			q.scratch = make([][]byte, cfg.TXBatch)
		}
		d.queues = append(d.queues, q)
	}
	d.hdrLen = d.headerLen(0)
	return d, nil
}

// QueuePairs returns the number of queue pairs.
func (d *NetDevice) QueuePairs() int { return d.pairs }

// Features returns the virtio and vhost-user feature bits the device offers.
func (d *NetDevice) Features() uint64 { return d.offer }

// ProtocolFeatures returns the vhost-user protocol features offered.
func (d *NetDevice) ProtocolFeatures() uint64 {
	return ProtocolFeatureMQ | ProtocolFeatureReplyAck | ProtocolFeatureLogShmfd | ProtocolFeatureRARP
}

// AckedFeatures returns the features the front-end acknowledged.
func (d *NetDevice) AckedFeatures() uint64 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.features
}

// Ready reports whether both queues of pair are running.
func (d *NetDevice) Ready(pair int) bool {
	if pair < 0 || pair >= d.pairs {
		return false
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.faulted.Load() {
		return false
	}
	for _, q := range d.queues[2*pair : 2*pair+2] {
		if q.vq == nil || !q.enabled || q.vq.Broken() != nil {
			return false
		}
	}
	return true
}

// Stats returns the counters of every virtqueue, RX and TX alternating.
func (d *NetDevice) Stats() []QueueStats {
	out := make([]QueueStats, len(d.queues))
	for i, q := range d.queues {
		c := &q.stats
		out[i] = QueueStats{
			Queue: i, Packets: c.packets.Load(), Bytes: c.bytes.Load(), Drops: c.drops.Load(),
			Broken: c.broken.Load(), Calls: c.calls.Load(), Kicks: c.kicks.Load(),
		}
	}
	return out
}

// headerLen is the virtio-net header length for features: 12 bytes
// (virtio_net_hdr_v1, with num_buffers) with VERSION_1 or MRG_RXBUF, else 10.
func (d *NetDevice) headerLen(features uint64) int {
	if features&(FeatureVersion1|FeatureNetMrgRxbuf) != 0 {
		return 12
	}
	return 10
}

// cursor walks the buffers of a chain.
type cursor struct{ seg, off int }

// space returns the rest of the current buffer, skipping exhausted ones; nil
// at the end of the chain.
func (c *cursor) space(segs [][]byte) []byte {
	for c.seg < len(segs) {
		if b := segs[c.seg][c.off:]; len(b) > 0 {
			return b
		}
		c.seg++
		c.off = 0
	}
	return nil
}

// scatter copies as much of src as fits into segs from c on.
func (c *cursor) scatter(segs [][]byte, src []byte) int {
	total := 0
	for len(src) > 0 {
		b := c.space(segs)
		if b == nil {
			break
		}
		n := copy(b, src)
		c.off += n
		src = src[n:]
		total += n
	}
	return total
}

// Deliver copies frames into the guest's RX buffers of queue pair pair and
// publishes them with one used-index update and at most one interrupt. It
// returns how many frames it placed. It stops when the guest has no more
// buffers (the rest are dropped); frames larger than MaxFrameSize, or than
// a guest buffer without VIRTIO_NET_F_MRG_RXBUF, are dropped and the next
// tried. Every frame not placed is counted in the queue's Drops. The error
// is ErrNotReady when the queue is not running, or wraps ErrQueueBroken.
func (d *NetDevice) Deliver(pair int, frames [][]byte) (delivered int, err error) {
	placed, consumed, err := d.Offer(pair, frames)
	if rest := len(frames) - consumed; rest > 0 && pair >= 0 && pair < d.pairs {
		d.queues[2*pair].stats.drops.Add(uint64(rest))
	}
	return placed, err
}

// Offer is Deliver for a caller that keeps the frames the guest has no
// buffers for yet and offers them again later (vmport holds them in the
// AF_XDP socket's ring). It returns how many frames it placed and how many
// from the front it consumed: placed, or dropped on their own because no
// guest buffer can hold them (those are counted in Drops). frames[consumed:]
// are untouched and not counted. With an error nothing more can be placed:
// ErrNotReady when the queue is not running, or one wrapping ErrQueueBroken.
func (d *NetDevice) Offer(pair int, frames [][]byte) (placed, consumed int, err error) {
	if pair < 0 || pair >= d.pairs {
		return 0, 0, fmt.Errorf("vhost: deliver: queue pair %d out of range [0, %d)", pair, d.pairs)
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	q := d.queues[2*pair]
	q.mu.Lock()
	defer q.mu.Unlock()
	if d.faulted.Load() {
		return 0, 0, errFaulted
	}
	vq := q.vq
	if vq == nil || !q.enabled {
		return 0, 0, ErrNotReady
	}
	if d.handed != nil && d.handed[pair] {
		return 0, 0, ErrHandedOff
	}
	// A fault on guest memory: nothing counts as placed (the used index
	// may not be published), the caller drops the frames.
	old := armFaults()
	defer func() {
		if ferr := d.caught(q, old, recover()); ferr != nil {
			placed, consumed, err = 0, 0, ferr
		}
	}()
	mrg := d.features&FeatureNetMrgRxbuf != 0
	var lb *logBatch // nil unless migrating: one branch per frame
	if d.logging() {
		lb = d.startLog(q)
	}
	startUsed := vq.nextUsed
	var bytes uint64
	for _, f := range frames {
		n, ferr := d.place(q, vq, f, mrg, lb, true)
		if ferr != nil || n < 0 {
			err = ferr
			break
		}
		consumed++
		if n > 0 {
			placed++
			bytes += uint64(len(f))
		}
	}
	notify := vq.PublishUsed()
	if lb != nil {
		if vq.nextUsed != startUsed {
			d.logUsed(q)
		}
		d.endLog(q)
	}
	if notify {
		q.signal()
	}
	q.checkBroken()
	q.stats.packets.Add(uint64(placed))
	q.stats.bytes.Add(bytes)
	q.stats.drops.Add(uint64(consumed - placed))
	return placed, consumed, err
}

// place puts one frame into the guest: 1 when placed, 0 when dropped on its
// own, -1 when out of buffers. With lb (logging), every byte written is
// marked after it is written. With direct, a frame whose first buffer holds
// it and the header goes in by placeOne; tests turn it off to compare.
func (d *NetDevice) place(q *queue, vq *Virtqueue, f []byte, mrg bool, lb *logBatch, direct bool) (int, error) {
	if len(f) > MaxFrameSize {
		return 0, nil
	}
	hdr := [12]byte{}
	hlen := d.hdrLen
	var nb [2][]byte // where num_buffers landed
	need := hlen + len(f)
	q.used = q.used[:0]
	data := f
	for need > 0 {
		ok, err := vq.Pop(&q.chain)
		if err != nil {
			return -1, err
		}
		if !ok {
			vq.Rewind(len(q.used))
			return -1, nil
		}
		c := &q.chain
		if len(c.Readable) > 0 {
			return -1, vq.fail("RX chain at head %d has device-readable buffers", c.Head)
		}
		if direct && len(q.used) == 0 && len(c.Writable) > 0 && len(c.Writable[0]) >= need {
			return placeOne(vq, c, c.Writable[0][:need], hlen, f, lb)
		}
		if len(q.used) == 0 && c.WriteLen < hlen {
			return -1, vq.fail("RX chain at head %d holds %d bytes, less than the %d-byte header", c.Head, c.WriteLen, hlen)
		}
		if !mrg && c.WriteLen < need {
			vq.Rewind(1)
			return 0, nil
		}
		var cur cursor
		written := 0
		if len(q.used) == 0 {
			written += cur.scatter(c.Writable, hdr[:10])
			if hlen == 12 {
				nb[0] = cur.space(c.Writable)[:1]
				written += cur.scatter(c.Writable, hdr[10:11])
				nb[1] = cur.space(c.Writable)[:1]
				written += cur.scatter(c.Writable, hdr[11:12])
			}
		}
		n := cur.scatter(c.Writable, data)
		data = data[n:]
		written += n
		need -= written
		if lb != nil {
			lb.markWritten(vq.mem(), c.Writable, written)
		}
		q.used = append(q.used, usedEntry{head: c.Head, len: uint32(written)})
	}
	if hlen == 12 {
		var v [2]byte
		binary.LittleEndian.PutUint16(v[:], uint16(len(q.used)))
		nb[0][0], nb[1][0] = v[0], v[1]
		if lb != nil {
			lb.markHost(vq.mem(), nb[0])
			lb.markHost(vq.mem(), nb[1])
		}
	}
	for _, u := range q.used {
		if err := vq.PushUsed(u.head, u.len); err != nil {
			return -1, err
		}
	}
	return 1, nil
}

// placeOne is place's fast path, for a chain whose first writable buffer
// holds the header and the whole frame: buf is that buffer cut to
// hlen+len(f). It writes the header (all zero but num_buffers, 1) and the
// frame straight into it, marks exactly those bytes when logging, and
// returns the chain as used. Its writes run inside Offer's fault guard.
func placeOne(vq *Virtqueue, c *Chain, buf []byte, hlen int, f []byte, lb *logBatch) (int, error) {
	clear(buf[:10])
	if hlen == 12 {
		buf[10], buf[11] = 1, 0 // num_buffers, little-endian
	}
	copy(buf[hlen:], f)
	if lb != nil {
		lb.markHost(vq.mem(), buf)
	}
	if err := vq.PushUsed(c.Head, uint32(len(buf))); err != nil {
		return -1, err
	}
	return 1, nil
}

// processTX drains TX queue idx in batches, hands the frames to the TX
// handler and returns the chains. It reports whether it moved anything.
func (d *NetDevice) processTX(idx int) (worked bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	q := d.queues[idx]
	q.mu.Lock()
	defer q.mu.Unlock()
	vq := q.vq
	if vq == nil || !q.enabled || vq.Broken() != nil || d.faulted.Load() {
		return false
	}
	old := armFaults() // the rings, the frames and the TX handler's reads
	defer func() {
		if d.caught(q, old, recover()) != nil {
			worked = false
		}
	}()
	pair := idx / 2
	for {
		vq.DisableNotify()
		q.used = q.used[:0]
		nf := 0
		var bytes uint64
		drops := 0
		for len(q.used) < d.cfg.TXBatch {
			ok, err := vq.Pop(&q.chain)
			if err != nil || !ok {
				break
			}
			q.used = append(q.used, usedEntry{head: q.chain.Head})
			f, ok := d.txFrame(q, nf)
			if !ok {
				drops++
				continue
			}
			q.frames[nf] = f
			nf++
			bytes += uint64(len(f))
		}
		if len(q.used) > 0 {
			worked = true
			if nf > 0 {
				if d.cfg.TX != nil {
					d.cfg.TX(pair, q.frames[:nf])
					q.stats.packets.Add(uint64(nf))
					q.stats.bytes.Add(bytes)
				} else {
					drops += nf
				}
			}
			clear(q.frames[:nf])
			q.stats.drops.Add(uint64(drops))
			for _, u := range q.used {
				vq.PushUsed(u.head, 0)
			}
			if vq.PublishUsed() {
				q.signal()
			}
		}
		if vq.Broken() != nil {
			q.checkBroken()
			d.logTXUsed(q)
			return worked
		}
		if len(q.used) == d.cfg.TXBatch {
			continue
		}
		if !vq.EnableNotify() {
			d.logTXUsed(q)
			return worked
		}
	}
}

// logTXUsed marks a TX queue's used ring after processTX wrote it (used
// entries and idx, flags, avail_event) when logging. Called with d.mu (read)
// and q.mu held.
func (d *NetDevice) logTXUsed(q *queue) {
	if d.logging() {
		d.startLog(q)
		d.logUsed(q)
		d.endLog(q)
	}
}

// txFrame extracts the frame of q.chain, stripping the virtio-net header.
// A frame in one buffer is returned in place; others are gathered into the
// batch slot's scratch buffer.
func (d *NetDevice) txFrame(q *queue, slot int) ([]byte, bool) {
	c := &q.chain
	hlen := d.hdrLen
	if len(c.Writable) > 0 || c.ReadLen < hlen || c.ReadLen-hlen > MaxFrameSize {
		return nil, false
	}
	// Skip the header.
	var cur cursor
	for skip := hlen; skip > 0; {
		b := cur.space(c.Readable)
		if b == nil {
			return nil, false
		}
		n := min(len(b), skip)
		cur.off += n
		skip -= n
	}
	rest := cur.space(c.Readable)
	if len(rest) == c.ReadLen-hlen {
		return rest, true // contiguous: zero copy
	}
	buf := q.scratch[slot]
	if cap(buf) < c.ReadLen-hlen {
		buf = make([]byte, 0, max(c.ReadLen-hlen, 2048))
		q.scratch[slot] = buf
	}
	buf = buf[:c.ReadLen-hlen]
	n := 0
	for b := cur.space(c.Readable); b != nil; b = cur.space(c.Readable) {
		n += copy(buf[n:], b)
		cur.off += len(b)
	}
	return buf[:n], true
}

// attach prepares the device for a new front-end connection: it starts the
// kick goroutine. abort closes the connection; the device calls it after a
// guest memory fault.
func (d *NetDevice) attach(log *slog.Logger, abort func()) (err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.done != nil {
		return errors.New("vhost: device already serves a front-end")
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("vhost: epoll_create: %w", err)
	}
	stopFD, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return fmt.Errorf("vhost: eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: -1}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, stopFD, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(stopFD)
		return fmt.Errorf("vhost: epoll_ctl: %w", err)
	}
	d.epfd, d.stopFD, d.done = epfd, stopFD, make(chan struct{})
	d.connLog, d.abort = log, abort
	go d.kickLoop(epfd, log, d.done)
	return nil
}

// detachTimeout bounds the wait for the kick goroutine.
const detachTimeout = 5 * time.Second

// detach ends a front-end connection: it stops the kick goroutine and drops
// every ring, fd and mapping of the connection. Counters are kept.
func (d *NetDevice) detach() {
	d.mu.Lock()
	done, stopFD, epfd := d.done, d.stopFD, d.epfd
	d.mu.Unlock()
	if done != nil {
		unix.Write(stopFD, eventOne[:])
		select {
		case <-done:
		case <-time.After(detachTimeout):
			d.log.Error("vhost: kick goroutine did not stop; is the TX handler blocked?", "timeout", detachTimeout)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.releaseAllRX(false) // before the memory goes
	for _, q := range d.queues {
		q.mu.Lock()
		q.resetConfig()
		q.mu.Unlock()
	}
	if err := d.mem.Close(); err != nil {
		d.log.Error("vhost: unmapping guest memory", "err", err)
	}
	d.mem = nil
	if err := d.dlog.close(); err != nil {
		d.log.Error("vhost: unmapping the dirty log", "err", err)
	}
	d.dlog = nil
	d.logMissWarned.Store(false)
	d.features, d.protocol, d.featuresSet = 0, 0, false
	d.hdrLen = d.headerLen(0)
	d.polling.Store(0)
	d.connLog, d.abort, d.sealWarned = nil, nil, false
	d.faulted.Store(false)
	if done != nil {
		unix.Close(epfd)
		unix.Close(stopFD)
	}
	d.epfd, d.stopFD, d.done = -1, -1, nil
}

// kickLoop waits for kicks on the TX queues and processes them.
func (d *NetDevice) kickLoop(epfd int, log *slog.Logger, done chan struct{}) {
	defer close(done)
	events := make([]unix.EpollEvent, 2*MaxQueuePairs+1)
	var buf [8]byte
	for {
		timeout := 100
		if d.polling.Load() > 0 {
			timeout = 1
		}
		n, err := unix.EpollWait(epfd, events, timeout)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			log.Error("vhost: epoll_wait", "err", err)
			return
		}
		for _, ev := range events[:n] {
			if ev.Fd < 0 {
				return
			}
			idx := int(ev.Fd)
			if idx >= len(d.queues) {
				continue
			}
			d.mu.RLock()
			if fd := d.queues[idx].kickFD; fd >= 0 {
				unix.Read(fd, buf[:])
			}
			d.mu.RUnlock()
			d.queues[idx].stats.kicks.Add(1)
			d.processTX(idx)
		}
		if d.polling.Load() > 0 {
			d.pollTX(true)
		}
		if n > 0 && d.cfg.BusyPoll > 0 {
			deadline := time.Now().Add(d.cfg.BusyPoll)
			for time.Now().Before(deadline) {
				if !d.pollTX(false) {
					runtime.Gosched()
				}
			}
		}
	}
}

// pollTX processes TX queues without waiting for kicks: all of them, or
// only those started without a kick fd.
func (d *NetDevice) pollTX(onlyPolled bool) bool {
	worked := false
	for i := 1; i < len(d.queues); i += 2 {
		if onlyPolled {
			d.mu.RLock()
			p := d.queues[i].polled
			d.mu.RUnlock()
			if !p {
				continue
			}
		}
		if d.processTX(i) {
			worked = true
		}
	}
	return worked
}
