package vhost

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
)

// MaxQueueSize is the largest split virtqueue size (virtio 1.x, 2.7).
const MaxQueueSize = 32768

// Descriptor flags (virtio 1.x, 2.7.5).
const (
	descFNext     = 1
	descFWrite    = 2
	descFIndirect = 4
)

// Ring flags.
const (
	usedFNoNotify    = 1 // VRING_USED_F_NO_NOTIFY
	availFNoInterupt = 1 // VRING_AVAIL_F_NO_INTERRUPT
)

const descSize = 16

// ErrQueueBroken is wrapped by every error of a virtqueue the driver
// corrupted. A broken queue stays broken until it is set up again.
var ErrQueueBroken = errors.New("virtqueue broken")

// VirtqueueConfig locates a split virtqueue in guest memory.
type VirtqueueConfig struct {
	Index int    // queue index, for messages
	Size  uint16 // number of descriptors: a power of two, at most MaxQueueSize

	// Ring addresses in the front-end's address space (as sent by
	// VHOST_USER_SET_VRING_ADDR): the descriptor table (16-byte aligned),
	// the available ring (2-byte aligned) and the used ring (4-byte
	// aligned).
	DescAddr, AvailAddr, UsedAddr uint64

	LastAvail uint16 // VHOST_USER_SET_VRING_BASE: next avail ring entry to read
	EventIdx  bool   // VIRTIO_RING_F_EVENT_IDX negotiated
	Indirect  bool   // VIRTIO_RING_F_INDIRECT_DESC negotiated

	Logger *slog.Logger // nil: slog.Default()
}

// Chain is a descriptor chain taken from the available ring: its buffers in
// guest memory, device-readable ones first. A Chain is reused across
// Virtqueue.Pop calls; its slices are valid until the memory table changes.
type Chain struct {
	Head     uint16   // head descriptor index, to return in PushUsed
	Readable [][]byte // device-readable buffers, in chain order
	Writable [][]byte // device-writable buffers, in chain order
	ReadLen  int      // total bytes in Readable
	WriteLen int      // total bytes in Writable
}

func (c *Chain) reset() {
	clear(c.Readable)
	clear(c.Writable)
	c.Readable = c.Readable[:0]
	c.Writable = c.Writable[:0]
	c.ReadLen, c.WriteLen = 0, 0
}

// Virtqueue is the device side of a split virtqueue in guest memory. It
// validates everything the driver wrote and marks itself broken, never
// panicking, when the driver breaks the rules. A Virtqueue is not safe for
// concurrent use.
type Virtqueue struct {
	cfg      VirtqueueConfig
	log      *slog.Logger
	memTable *MemoryTable
	mask     uint16

	desc  []byte // Size descriptors
	avail []byte // the avail ring, widened to 4-byte boundaries
	aOff  int    // offset of the avail ring in avail
	used  []byte // the used ring, widened to a 4-byte boundary

	availIdx  ringWord // avail->idx
	usedEvent ringWord // avail->used_event
	availFlg  ringWord // avail->flags
	usedIdx   *uint32  // used->flags | used->idx<<16
	availEvt  ringWord // used->avail_event

	lastAvail   uint16 // next avail entry to read
	cachedAvail uint16 // last avail->idx read
	nextUsed    uint16 // next used entry to write (not yet published)
	pubUsed     uint16 // used->idx as published
	usedFlags   uint16
	// notifyPending: an intermediate publish (PushUsed) found the driver
	// wanted an interrupt; the next PublishUsed reports it.
	notifyPending bool

	broken error
}

// NewVirtqueue locates the rings of cfg in mem. The used index starts from
// the value the used ring holds, so a queue resumes where a previous
// back-end left it.
func NewVirtqueue(mem *MemoryTable, cfg VirtqueueConfig) (*Virtqueue, error) {
	if !hostLittleEndian {
		return nil, errors.New("virtqueue: big-endian hosts are not supported")
	}
	n := int(cfg.Size)
	if n == 0 || n > MaxQueueSize || n&(n-1) != 0 {
		return nil, fmt.Errorf("virtqueue %d: size %d is not a power of two in [1, %d]", cfg.Index, n, MaxQueueSize)
	}
	switch {
	case cfg.DescAddr%16 != 0:
		return nil, fmt.Errorf("virtqueue %d: descriptor table %#x not 16-byte aligned", cfg.Index, cfg.DescAddr)
	case cfg.AvailAddr%2 != 0:
		return nil, fmt.Errorf("virtqueue %d: avail ring %#x not 2-byte aligned", cfg.Index, cfg.AvailAddr)
	case cfg.UsedAddr%4 != 0:
		return nil, fmt.Errorf("virtqueue %d: used ring %#x not 4-byte aligned", cfg.Index, cfg.UsedAddr)
	}
	q := &Virtqueue{cfg: cfg, log: cfg.Logger, mask: uint16(n - 1)}
	if q.log == nil {
		q.log = slog.Default()
	}
	if err := q.Remap(mem); err != nil {
		return nil, err
	}
	q.lastAvail = cfg.LastAvail
	q.cachedAvail = cfg.LastAvail
	q.nextUsed = uint16(atomic.LoadUint32(q.usedIdx) >> 16)
	q.pubUsed = q.nextUsed
	return q, nil
}

// Remap translates the rings again, in a new memory table. On error the
// queue is unusable (broken).
func (q *Virtqueue) Remap(mem *MemoryTable) error {
	err := q.remap(mem)
	if err != nil {
		q.broken = fmt.Errorf("%w: %w", ErrQueueBroken, err)
	}
	return err
}

func (q *Virtqueue) remap(mem *MemoryTable) error {
	n := uint64(q.cfg.Size)
	desc, err := mem.User(q.cfg.DescAddr, n*descSize)
	if err != nil {
		return fmt.Errorf("virtqueue %d: descriptor table: %w", q.cfg.Index, err)
	}
	// avail: flags, idx, ring[n], used_event; the 16-bit words are reached
	// through aligned 32-bit words, so widen the range to 4-byte bounds.
	aStart := q.cfg.AvailAddr &^ 3
	aEnd := q.cfg.AvailAddr + 4 + 2*n + 2
	aEnd = (aEnd + 3) &^ 3
	avail, err := mem.User(aStart, aEnd-aStart)
	if err != nil {
		return fmt.Errorf("virtqueue %d: avail ring: %w", q.cfg.Index, err)
	}
	aOff := int(q.cfg.AvailAddr - aStart)
	// used: flags, idx, ring[n] of {id u32, len u32}, avail_event.
	used, err := mem.User(q.cfg.UsedAddr, 4+8*n+4)
	if err != nil {
		return fmt.Errorf("virtqueue %d: used ring: %w", q.cfg.Index, err)
	}
	var ok [5]bool
	q.availFlg, ok[0] = ringWordAt(avail, aOff)
	q.availIdx, ok[1] = ringWordAt(avail, aOff+2)
	q.usedEvent, ok[2] = ringWordAt(avail, aOff+4+2*int(n))
	q.usedIdx, ok[3] = ringWord32At(used, 0)
	q.availEvt, ok[4] = ringWordAt(used, 4+8*int(n))
	for _, o := range ok {
		if !o {
			return fmt.Errorf("virtqueue %d: rings are not naturally aligned in the back-end's mapping", q.cfg.Index)
		}
	}
	q.desc, q.avail, q.aOff, q.used = desc, avail, aOff, used
	q.memTable = mem
	return nil
}

// Size returns the number of descriptors.
func (q *Virtqueue) Size() uint16 { return q.cfg.Size }

// LastAvail returns the index of the next avail ring entry the device will
// read (the value VHOST_USER_GET_VRING_BASE reports).
func (q *Virtqueue) LastAvail() uint16 { return q.lastAvail }

// Broken returns the reason the queue is broken, or nil.
func (q *Virtqueue) Broken() error { return q.broken }

func (q *Virtqueue) fail(format string, args ...any) error {
	if q.broken == nil {
		reason := fmt.Sprintf(format, args...)
		q.broken = fmt.Errorf("%w: queue %d: %s", ErrQueueBroken, q.cfg.Index, reason)
		q.log.Error("vhost: virtqueue broken by the driver", "queue", q.cfg.Index, "reason", reason)
	}
	return q.broken
}

// breakWith marks the queue broken for a reason found outside it (a fault
// on guest memory), unless it is broken already.
func (q *Virtqueue) breakWith(err error) {
	if q.broken == nil {
		q.broken = err
	}
}

// Pending returns how many chains the driver has made available and the
// device has not taken yet.
func (q *Virtqueue) Pending() (int, error) {
	if q.broken != nil {
		return 0, q.broken
	}
	idx := q.availIdx.load()
	n := idx - q.lastAvail
	if n > q.cfg.Size {
		return 0, q.fail("avail idx %d is %d entries ahead of last avail %d (size %d)", idx, n, q.lastAvail, q.cfg.Size)
	}
	q.cachedAvail = idx
	return int(n), nil
}

// Pop takes the next available descriptor chain into c. It returns false
// with a nil error when the driver has made nothing new available, and an
// error wrapping ErrQueueBroken when the queue is (or just became) broken.
func (q *Virtqueue) Pop(c *Chain) (bool, error) {
	if q.broken != nil {
		return false, q.broken
	}
	if q.cachedAvail == q.lastAvail {
		if n, err := q.Pending(); err != nil || n == 0 {
			return false, err
		}
	}
	off := q.aOff + 4 + 2*int(q.lastAvail&q.mask)
	head := binary.LittleEndian.Uint16(q.avail[off:])
	if head >= q.cfg.Size {
		return false, q.fail("avail entry %d names descriptor %d, beyond size %d", q.lastAvail, head, q.cfg.Size)
	}
	if err := q.walk(c, head); err != nil {
		return false, err
	}
	q.lastAvail++
	return true, nil
}

type desc struct {
	addr  uint64
	len   uint32
	flags uint16
	next  uint16
}

func readDesc(table []byte, i int) desc {
	b := table[i*descSize : i*descSize+descSize]
	return desc{
		addr:  binary.LittleEndian.Uint64(b[0:]),
		len:   binary.LittleEndian.Uint32(b[8:]),
		flags: binary.LittleEndian.Uint16(b[12:]),
		next:  binary.LittleEndian.Uint16(b[14:]),
	}
}

// walk follows the chain starting at head. Each descriptor is read once
// into a local copy, so a driver rewriting the table meanwhile cannot make
// the device act on values it did not check.
func (q *Virtqueue) walk(c *Chain, head uint16) error {
	c.reset()
	c.Head = head
	table := q.desc
	tableLen := int(q.cfg.Size)
	idx := int(head)
	indirect := false
	// A chain may not be longer than the queue (2.7.5.3.1), direct and
	// indirect descriptors together; counting also stops loops.
	limit := int(q.cfg.Size)
	for count := 0; ; count++ {
		if count >= limit {
			return q.fail("chain at head %d is longer than %d descriptors (loop?)", head, limit)
		}
		d := readDesc(table, idx)
		if d.flags&descFIndirect != 0 {
			switch {
			case !q.cfg.Indirect:
				return q.fail("chain at head %d: indirect descriptor, but VIRTIO_RING_F_INDIRECT_DESC was not negotiated", head)
			case indirect:
				return q.fail("chain at head %d: nested indirect descriptor", head)
			case d.flags&descFNext != 0:
				return q.fail("chain at head %d: indirect descriptor with NEXT", head)
			case d.len == 0 || d.len%descSize != 0:
				return q.fail("chain at head %d: indirect table length %d is not a positive multiple of %d", head, d.len, descSize)
			case int(d.len/descSize) > limit-count:
				return q.fail("chain at head %d: indirect table of %d descriptors makes the chain longer than %d", head, d.len/descSize, limit)
			}
			t, err := q.mem().Guest(d.addr, uint64(d.len))
			if err != nil {
				return q.fail("chain at head %d: indirect table: %v", head, err)
			}
			table, tableLen, idx, indirect = t, int(d.len/descSize), 0, true
			continue
		}
		var buf []byte
		if d.len > 0 {
			b, err := q.mem().Guest(d.addr, uint64(d.len))
			if err != nil {
				return q.fail("chain at head %d: buffer: %v", head, err)
			}
			buf = b
		}
		if d.flags&descFWrite != 0 {
			c.Writable = append(c.Writable, buf)
			c.WriteLen += len(buf)
		} else {
			if len(c.Writable) > 0 {
				return q.fail("chain at head %d: device-readable descriptor after a device-writable one", head)
			}
			c.Readable = append(c.Readable, buf)
			c.ReadLen += len(buf)
		}
		if d.flags&descFNext == 0 {
			return nil
		}
		if int(d.next) >= tableLen {
			return q.fail("chain at head %d: next %d beyond table of %d", head, d.next, tableLen)
		}
		idx = int(d.next)
	}
}

// Rewind gives back the last n chains taken by Pop that were not pushed to
// the used ring: the next Pop returns them again.
func (q *Virtqueue) Rewind(n int) {
	q.lastAvail -= uint16(n)
}

// PushUsed writes a used ring entry for the chain at head, with written the
// number of bytes the device wrote into it. Entries become visible to the
// driver at the next PublishUsed.
func (q *Virtqueue) PushUsed(head uint16, written uint32) error {
	if q.broken != nil {
		return q.broken
	}
	if head >= q.cfg.Size {
		return fmt.Errorf("virtqueue %d: used entry for descriptor %d beyond size %d", q.cfg.Index, head, q.cfg.Size)
	}
	if q.nextUsed-q.pubUsed >= q.cfg.Size {
		// The driver made more than a ring's worth available within one
		// batch: publish what we have so entries are never overwritten.
		if q.PublishUsed() {
			q.notifyPending = true
		}
	}
	off := 4 + 8*int(q.nextUsed&q.mask)
	e := q.used[off : off+8]
	binary.LittleEndian.PutUint32(e[0:], uint32(head))
	binary.LittleEndian.PutUint32(e[4:], written)
	q.nextUsed++
	return nil
}

// PublishUsed makes the pushed used entries visible with one store of
// used->idx, and reports whether the driver asked to be notified about them
// (VIRTIO_RING_F_EVENT_IDX's used_event, or VRING_AVAIL_F_NO_INTERRUPT).
func (q *Virtqueue) PublishUsed() (notify bool) {
	notify, q.notifyPending = q.notifyPending, false
	if q.nextUsed == q.pubUsed || q.broken != nil {
		return notify
	}
	old, nw := q.pubUsed, q.nextUsed
	// A sequentially consistent store: the entries are written before the
	// index, and the index before the reads of the driver's event fields.
	storeUsed(q.usedIdx, q.usedFlags, nw)
	q.pubUsed = nw
	if q.cfg.EventIdx {
		return notify || needEvent(q.usedEvent.load(), nw, old)
	}
	return notify || q.availFlg.load()&availFNoInterupt == 0
}

// needEvent is vring_need_event: whether moving an index from old to nw
// crossed the event index the other side asked about.
func needEvent(event, nw, old uint16) bool {
	return nw-event-1 < nw-old
}

// DisableNotify asks the driver not to kick for new buffers (best effort:
// with EVENT_IDX the driver stops kicking once avail_event falls behind).
func (q *Virtqueue) DisableNotify() {
	if q.broken != nil || q.cfg.EventIdx {
		return
	}
	if q.usedFlags&usedFNoNotify == 0 {
		q.usedFlags |= usedFNoNotify
		storeUsed(q.usedIdx, q.usedFlags, q.pubUsed)
	}
}

// EnableNotify asks the driver to kick when it makes new buffers available,
// then checks again: it returns true when buffers arrived meanwhile (the
// caller must poll again instead of waiting for a kick).
func (q *Virtqueue) EnableNotify() (more bool) {
	if q.broken != nil {
		return false
	}
	if q.cfg.EventIdx {
		q.availEvt.store(q.lastAvail)
	} else if q.usedFlags&usedFNoNotify != 0 {
		q.usedFlags &^= usedFNoNotify
		storeUsed(q.usedIdx, q.usedFlags, q.pubUsed)
	}
	n, err := q.Pending()
	return err == nil && n > 0
}

func (q *Virtqueue) mem() *MemoryTable { return q.memTable }

// storeUsed writes used->flags and used->idx with one atomic store.
func storeUsed(p *uint32, flags, idx uint16) {
	atomic.StoreUint32(p, uint32(flags)|uint32(idx)<<16)
}
