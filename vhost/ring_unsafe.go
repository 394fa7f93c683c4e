package vhost

// This file holds the only uses of package unsafe in package vhost: atomic
// access to the 16-bit index and event words of a split virtqueue, which
// live in guest memory. sync/atomic has no 16-bit operations, so each 16-bit
// field is accessed through the naturally aligned 32-bit word that contains
// it. The caller guarantees that the whole word lies inside the slice it
// passes (rings are translated with their ends widened to 4-byte
// boundaries), so no access ever leaves guest memory. Also here: the
// address of a mapping, to tell whether a fault hit guest memory.

import (
	"encoding/binary"
	"sync/atomic"
	"unsafe"
)

// hostLittleEndian reports whether the host stores integers little-endian,
// as virtio 1.x rings do. The atomic helpers below rely on it.
var hostLittleEndian = func() bool {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], 1)
	return b[0] == 1
}()

// ringWord is a 16-bit field of a ring, reached through the aligned 32-bit
// word holding it.
type ringWord struct {
	p     *uint32
	shift uint
}

// ringWordAt locates the 16-bit field b[off:off+2]. It fails when off is odd
// or the containing aligned 32-bit word is not entirely inside b.
func ringWordAt(b []byte, off int) (ringWord, bool) {
	if off < 0 || off%2 != 0 || off+2 > len(b) {
		return ringWord{}, false
	}
	base := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	addr := base + uintptr(off)
	aligned := addr &^ 3
	if aligned < base || aligned+4 > base+uintptr(len(b)) {
		return ringWord{}, false
	}
	w := (*uint32)(unsafe.Pointer(&b[int(aligned-base)]))
	return ringWord{p: w, shift: uint(addr-aligned) * 8}, true
}

// load reads the field with acquire semantics (sync/atomic is sequentially
// consistent).
func (w ringWord) load() uint16 {
	return uint16(atomic.LoadUint32(w.p) >> w.shift)
}

// store writes the field atomically without touching the other half of the
// word, which may belong to the driver; the CAS is also a full barrier.
func (w ringWord) store(v uint16) {
	for {
		old := atomic.LoadUint32(w.p)
		nw := old&^(0xffff<<w.shift) | uint32(v)<<w.shift
		if atomic.CompareAndSwapUint32(w.p, old, nw) {
			return
		}
	}
}

// ringWord32At locates the aligned 32-bit word b[off:off+4].
func ringWord32At(b []byte, off int) (*uint32, bool) {
	if off < 0 || off+4 > len(b) {
		return nil, false
	}
	p := unsafe.Pointer(&b[off])
	if uintptr(p)%4 != 0 {
		return nil, false
	}
	return (*uint32)(p), true
}

// sliceAddr is the address of b's first byte (for comparisons only).
func sliceAddr(b []byte) uintptr {
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))
}

// orWord atomically ORs mask into the w-th 64-bit word of b, which starts at
// an 8-byte aligned address (a mapping). The word must be inside b.
func orWord(b []byte, w uint64, mask uint64) {
	if w >= uint64(len(b))/8 || sliceAddr(b)%8 != 0 {
		panic("vhost: dirty log word outside its mapping")
	}
	atomic.OrUint64((*uint64)(unsafe.Pointer(&b[8*w])), mask)
}
