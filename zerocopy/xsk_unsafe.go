package zerocopy

// Everything in this package that needs package unsafe is in this file:
// turning a ring's mapping into its shared words and descriptor array, and
// the socket options whose arguments are structs or raw memory addresses,
// which golang.org/x/sys/unix has no typed wrappers for.

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Sizes of the kernel's ring entries: struct xdp_desc in the RX and TX rings,
// a __u64 UMEM address in the fill and completion rings.
const (
	descSize = int(unsafe.Sizeof(Desc{}))
	addrSize = 8
)

// The kernel's struct xdp_desc is {__u64 addr; __u32 len; __u32 options}.
var (
	_ [16 - unsafe.Sizeof(Desc{})]struct{}
	_ [unsafe.Sizeof(Desc{}) - 16]struct{}
)

// ringWords returns the shared producer, consumer and flags words of a ring
// mapped at m. The offsets come from XDP_MMAP_OFFSETS; the mapping is at
// least one page, and the caller checked that the offsets lie in it.
func ringWords(m []byte, off unix.XDPRingOffset) (prod, cons, flags *uint32) {
	return (*uint32)(unsafe.Pointer(&m[off.Producer])),
		(*uint32)(unsafe.Pointer(&m[off.Consumer])),
		(*uint32)(unsafe.Pointer(&m[off.Flags]))
}

// descRing views the n descriptors of an RX or TX ring mapped at m.
func descRing(m []byte, off unix.XDPRingOffset, n uint32) []Desc {
	_ = m[off.Desc+uint64(n)*uint64(descSize)-1] // bounds check
	return unsafe.Slice((*Desc)(unsafe.Pointer(&m[off.Desc])), n)
}

// addrRing views the n addresses of a fill or completion ring mapped at m.
func addrRing(m []byte, off unix.XDPRingOffset, n uint32) []uint64 {
	_ = m[off.Desc+uint64(n)*addrSize-1] // bounds check
	return unsafe.Slice((*uint64)(unsafe.Pointer(&m[off.Desc])), n)
}

// registerUMEM registers mem as the UMEM of socket fd (XDP_UMEM_REG). The
// kernel pins the pages; mem must stay mapped until the socket is closed.
func registerUMEM(fd int, mem []byte, frameSize, headroom uint32) error {
	reg := unix.XDPUmemReg{
		Addr:     uint64(uintptr(unsafe.Pointer(unsafe.SliceData(mem)))),
		Len:      uint64(len(mem)),
		Size:     frameSize,
		Headroom: headroom,
	}
	return setsockopt(fd, unix.XDP_UMEM_REG, unsafe.Pointer(&reg), unsafe.Sizeof(reg))
}

func setsockopt(fd, opt int, p unsafe.Pointer, size uintptr) error {
	_, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_XDP, uintptr(opt),
		uintptr(p), size, 0)
	if e != 0 {
		return e
	}
	return nil
}

func getsockopt(fd, opt int, p unsafe.Pointer, size uintptr) error {
	l := uint32(size)
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_XDP, uintptr(opt),
		uintptr(p), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return e
	}
	if uintptr(l) != size {
		return fmt.Errorf("kernel returned %d bytes, want %d", l, size)
	}
	return nil
}

// mmapOffsets reads XDP_MMAP_OFFSETS (the flags-aware layout, Linux 5.4+).
func mmapOffsets(fd int) (unix.XDPMmapOffsets, error) {
	var off unix.XDPMmapOffsets
	err := getsockopt(fd, unix.XDP_MMAP_OFFSETS, unsafe.Pointer(&off), unsafe.Sizeof(off))
	return off, err
}

// xdpStatistics reads XDP_STATISTICS (all six counters, Linux 5.9+).
func xdpStatistics(fd int) (unix.XDPStatistics, error) {
	var st unix.XDPStatistics
	err := getsockopt(fd, unix.XDP_STATISTICS, unsafe.Pointer(&st), unsafe.Sizeof(st))
	return st, err
}

// pageAligned reports whether mem starts on a page boundary.
func pageAligned(mem []byte) bool {
	return uintptr(unsafe.Pointer(unsafe.SliceData(mem)))%uintptr(unix.Getpagesize()) == 0
}

// registerGuestUMEM registers mem (a contiguous view of guest memory) as
// the UMEM of socket fd in unaligned-chunk mode: fill addresses are any
// byte offsets, not frame numbers (XDP_UMEM_UNALIGNED_CHUNK_FLAG).
func registerGuestUMEM(fd int, mem []byte, chunk, headroom uint32) error {
	reg := unix.XDPUmemReg{
		Addr:     uint64(uintptr(unsafe.Pointer(unsafe.SliceData(mem)))),
		Len:      uint64(len(mem)),
		Size:     chunk,
		Headroom: headroom,
		Flags:    unix.XDP_UMEM_UNALIGNED_CHUNK_FLAG,
	}
	return setsockopt(fd, unix.XDP_UMEM_REG, unsafe.Pointer(&reg), unsafe.Sizeof(reg))
}
