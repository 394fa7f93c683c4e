package vhost

import (
	"fmt"
	"math"

	"golang.org/x/sys/unix"
)

// Dirty-page logging for live migration (QEMU docs/interop/vhost-user.rst,
// "Migration").
//
// While the front-end has acked VHOST_F_LOG_ALL, every guest page the
// back-end writes is marked in a bitmap the front-end shares with
// VHOST_USER_SET_LOG_BASE (VHOST_USER_PROTOCOL_F_LOG_SHMFD): one bit per
// 4 KiB page of guest-physical address, bit (addr/4096)%8 of byte
// (addr/4096)/8 from the log's offset in its file, set with an atomic OR
// after the write it records. The back-end writes two things: the RX
// buffers it fills (addressed by guest-physical descriptor addresses) and
// the used rings (logged at log_guest_addr of SET_VRING_ADDR, only for rings
// with VHOST_VRING_F_LOG). Bits are gathered per 64-bit word of the bitmap
// and each word is ORed once (logBatch), and every batch is flushed before
// the data path releases the device, so GET_VRING_BASE (which stops the
// ring under the device's write lock) answers only after every write of the
// ring is logged.

// FeatureLogAll is VHOST_F_LOG_ALL: the back-end can log the pages it
// writes.
const FeatureLogAll = uint64(1) << 26

// ProtocolFeatureLogShmfd is VHOST_USER_PROTOCOL_F_LOG_SHMFD: the log is
// shared as an fd with SET_LOG_BASE.
const ProtocolFeatureLogShmfd = uint64(1) << 1

// LogPageSize is VHOST_LOG_PAGE: the guest memory one log bit covers.
const LogPageSize = 0x1000

// MaxLogSize bounds the log size of SET_LOG_BASE: 1 GiB of bitmap covers
// 32 TiB of guest-physical address space.
const MaxLogSize = 1 << 30

// LogBase is the payload of SET_LOG_BASE.
type LogBase struct {
	Size   uint64 // bytes of bitmap
	Offset uint64 // where the bitmap starts in the fd (guest address 0)
}

// dirtyLog is a mapped log.
type dirtyLog struct {
	LogBase
	mapping []byte // from file offset 0, its length rounded up to 8 bytes
	seal    Sealing
}

// newDirtyLog maps the log of SET_LOG_BASE. It takes ownership of fd (it
// is closed before it returns). The log must lie inside its file (touching
// a shared mapping beyond the end of its file faults).
func newDirtyLog(lb LogBase, fd int) (*dirtyLog, error) {
	defer unix.Close(fd)
	switch {
	case lb.Size == 0:
		return nil, fmt.Errorf("dirty log: size 0: the log must cover guest memory")
	case lb.Size > MaxLogSize:
		return nil, fmt.Errorf("dirty log: size %#x exceeds %#x bytes", lb.Size, MaxLogSize)
	case lb.Offset > math.MaxInt/4:
		return nil, fmt.Errorf("dirty log: offset %#x too large", lb.Offset)
	}
	end := lb.Offset + lb.Size // no overflow: both bounded
	seal := sealShrink(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("dirty log: fstat: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("dirty log: fd is not a regular file (mode %#o): the front-end must share a memfd", st.Mode)
	}
	if st.Size < 0 || uint64(st.Size) < end {
		return nil, fmt.Errorf("dirty log: offset %#x + size %#x ends at %#x, beyond the end of its file (%#x bytes)", lb.Offset, lb.Size, end, st.Size)
	}
	// Rounded up to whole 64-bit words: the bytes past end share the last
	// page with the log, so they do not fault, and ORs into them set no
	// bit (see logBatch.flush).
	n := (end + 7) &^ 7
	mapping, err := unix.Mmap(fd, 0, int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("dirty log: mmap %d bytes: %w", n, err)
	}
	return &dirtyLog{LogBase: lb, mapping: mapping, seal: seal}, nil
}

// pages is the number of log pages the log covers.
func (l *dirtyLog) pages() uint64 { return l.Size * 8 }

// covers reports whether the pages of [gpa, gpa+length) all have a bit.
func (l *dirtyLog) covers(gpa, length uint64) bool {
	if length == 0 {
		return true
	}
	if gpa > math.MaxUint64-(length-1) {
		return false
	}
	return (gpa+length-1)/LogPageSize < l.pages()
}

// coversMemory checks that every region of mem has its bits in the log.
func (l *dirtyLog) coversMemory(mem *MemoryTable) error {
	if mem == nil {
		return nil
	}
	for i, r := range mem.regions {
		if !l.covers(r.GuestPhysAddr, r.Size) {
			return fmt.Errorf("dirty log of %#x bytes covers guest-physical addresses below %#x, but region %d (%v) ends at %#x: the log must cover all guest memory (%#x bytes at least)",
				l.Size, l.pages()*LogPageSize, i, r.MemoryRegion, r.GuestPhysAddr+r.Size, logBytesFor(r.GuestPhysAddr+r.Size))
		}
	}
	return nil
}

// logBytesFor is the log size that covers guest-physical addresses below end.
func logBytesFor(end uint64) uint64 {
	pages := (end + LogPageSize - 1) / LogPageSize
	return (pages + 7) / 8
}

// close unmaps the log (nil-safe).
func (l *dirtyLog) close() error {
	if l == nil || l.mapping == nil {
		return nil
	}
	err := unix.Munmap(l.mapping)
	l.mapping = nil
	return err
}

// contains reports whether addr (of this process) is in the log's mapping.
func (l *dirtyLog) contains(addr uintptr) bool {
	if l == nil || len(l.mapping) == 0 {
		return false
	}
	base := sliceAddr(l.mapping)
	return addr >= base && addr-base < uintptr(len(l.mapping))
}

// usedRingLen is the length of a split used ring of n entries: flags, idx,
// ring[n] and avail_event.
func usedRingLen(n uint16) uint64 { return 4 + 8*uint64(n) + 2 }

// logBatch gathers the bits of one data-path call and ORs each 64-bit word
// of the bitmap once. A zero logBatch (nil log) marks nothing. Not safe for
// concurrent use: one per queue, used under queue.mu.
type logBatch struct {
	log    *dirtyLog
	word   uint64 // index of the pending 64-bit word in log.mapping
	mask   uint64 // pending bits of that word
	missed uint64 // pages outside the log (not marked)
}

// mark records that the back-end wrote [gpa, gpa+length) of guest-physical
// memory. Call it after the write.
func (b *logBatch) mark(gpa, length uint64) {
	if length == 0 {
		return
	}
	if b.log == nil { // logging on, but no SET_LOG_BASE yet
		b.missed++
		return
	}
	l := b.log
	if gpa > math.MaxUint64-(length-1) {
		b.missed++
		return
	}
	first, last := gpa/LogPageSize, (gpa+length-1)/LogPageSize
	if last >= l.pages() {
		if first >= l.pages() {
			b.missed += last - first + 1
			return
		}
		b.missed += last - l.pages() + 1
		last = l.pages() - 1
	}
	// Bit p of the log is bit offset*8+p of the mapping, read as
	// little-endian 64-bit words from the (page-aligned) mapping's start.
	for g := l.Offset*8 + first; g <= l.Offset*8+last; g++ {
		w, bit := g/64, uint64(1)<<(g%64)
		if w != b.word {
			b.flush()
			b.word = w
		}
		b.mask |= bit
	}
}

// flush ORs the pending word into the log.
func (b *logBatch) flush() {
	if b.mask == 0 {
		return
	}
	orWord(b.log.mapping, b.word, b.mask)
	b.mask = 0
}

// markHost marks the guest-physical pages of buf, a slice of guest memory
// (from a translation of mem). It reports false when b is not inside mem.
func (b *logBatch) markHost(mem *MemoryTable, buf []byte) bool {
	if len(buf) == 0 {
		return true
	}
	gpa, ok := mem.guestAddrOf(buf)
	if !ok {
		return false
	}
	b.mark(gpa, uint64(len(buf)))
	return true
}

// guestAddrOf returns the guest-physical address of buf's first byte, a
// slice of one region's mapping.
func (m *MemoryTable) guestAddrOf(buf []byte) (uint64, bool) {
	a := sliceAddr(buf)
	for i := range m.regions {
		r := &m.regions[i]
		base := sliceAddr(r.data)
		if a >= base && a-base < uintptr(len(r.data)) {
			return r.GuestPhysAddr + uint64(a-base), true
		}
	}
	return 0, false
}

// markWritten marks the first written bytes of the buffers segs, slices of
// mem (a chain's device-writable buffers).
func (b *logBatch) markWritten(mem *MemoryTable, segs [][]byte, written int) {
	for _, s := range segs {
		if written <= 0 {
			return
		}
		n := min(len(s), written)
		b.markHost(mem, s[:n])
		written -= n
	}
}

// logging reports whether the pages the back-end writes must be logged
// (VHOST_F_LOG_ALL acked). Called with d.mu held.
func (d *NetDevice) logging() bool { return d.features&FeatureLogAll != 0 }

// startLog points q's batch at the current log. Called with d.mu held (read
// or write) and, on the data path, q.mu.
func (d *NetDevice) startLog(q *queue) *logBatch {
	q.lb.log, q.lb.mask = d.dlog, 0 // nothing pending from a call a fault ended
	return &q.lb
}

// logUsed marks q's whole used ring (flags, idx, entries, avail_event: a
// page or two) when the front-end asked for it to be logged
// (VHOST_VRING_F_LOG). Call it after writing to the ring.
func (d *NetDevice) logUsed(q *queue) {
	if q.addr.Flags&VringFlagLog != 0 {
		q.lb.mark(q.addr.Log, usedRingLen(q.num))
	}
}

// endLog writes q's pending bits into the log and accounts for pages that
// could not be marked (no log yet, or beyond it): counted, and warned about
// once per log.
func (d *NetDevice) endLog(q *queue) {
	lb := &q.lb
	if lb.log != nil {
		lb.flush()
	}
	lb.log = nil
	if lb.missed == 0 {
		return
	}
	n := lb.missed
	lb.missed = 0
	d.logMissed.Add(n)
	if !d.logMissWarned.Swap(true) {
		log := d.connLog
		if log == nil {
			log = d.log
		}
		log.Warn("vhost: pages written while logging were not marked: no dirty log yet (SET_LOG_BASE) or beyond its end; the destination may miss them", "queue", q.index, "pages", n)
	}
}

// LogMissed returns how many page writes could not be marked in the dirty
// log while VHOST_F_LOG_ALL was on (no log mapped, or outside it).
func (d *NetDevice) LogMissed() uint64 { return d.logMissed.Load() }
