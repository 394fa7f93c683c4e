package vhost

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// GuestView is a second mapping of a memory table's regions, placed one
// after the other in one contiguous, page-aligned range of this process:
// what an AF_XDP UMEM needs (one area), for zero-copy delivery into guest
// memory. Region i's pages appear at their own place in the range; the
// bytes are the same pages the table maps (MAP_SHARED memory of the
// front-end's files), so a write through either mapping is seen by the
// guest.
//
// A GuestView does not keep the MemoryTable alive and is independent of it:
// Close it (after closing every socket that registered it) when the table
// changes or the front-end goes away.
type GuestView struct {
	mem  []byte
	regs []viewRegion
}

type viewRegion struct {
	host uintptr // address of the region's first byte in the table's mapping
	size uint64
	off  uint64 // offset of the region's first byte in mem
}

// MapContiguous maps the table's regions into one range. Each region is
// duplicated with mremap(old_size 0), which makes a new mapping of the
// same shared pages; the range is reserved first (PROT_NONE) and each
// region placed in it with MREMAP_FIXED, page aligned, so nothing else can
// land in between. It fails for memory that cannot be duplicated that way
// (private memory; hugetlbfs regions not aligned to their huge pages): the
// caller falls back to copying.
func (m *MemoryTable) MapContiguous() (_ *GuestView, err error) {
	if m == nil || len(m.regions) == 0 {
		return nil, errors.New("contiguous guest view: no memory table")
	}
	pg := uint64(unix.Getpagesize())
	var total uint64
	for _, r := range m.regions {
		start := r.MmapOffset &^ (pg - 1)
		end := (r.MmapOffset + r.Size + pg - 1) &^ (pg - 1)
		total += end - start
	}
	if total > 1<<46 {
		return nil, fmt.Errorf("contiguous guest view: %d bytes of guest memory, more than an AF_XDP UMEM addresses (2^48 with offsets)", total)
	}
	mem, err := unix.Mmap(-1, 0, int(total), unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("contiguous guest view: reserve %d bytes: %w", total, err)
	}
	v := &GuestView{mem: mem}
	defer func() {
		if err != nil {
			v.Close()
		}
	}()
	var cur uint64
	for i, r := range m.regions {
		start := r.MmapOffset &^ (pg - 1)
		end := (r.MmapOffset + r.Size + pg - 1) &^ (pg - 1)
		old := sliceAddr(r.mapping) + uintptr(start)
		dst := sliceAddr(mem) + uintptr(cur)
		got, _, e := unix.Syscall6(unix.SYS_MREMAP, old, 0, uintptr(end-start),
			unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, dst, 0)
		if e != 0 {
			return nil, fmt.Errorf("contiguous guest view: region %d (%v): duplicate %d bytes: %w", i, r.MemoryRegion, end-start, e)
		}
		if got != dst {
			return nil, fmt.Errorf("contiguous guest view: region %d: kernel placed it at %#x, not %#x", i, got, dst)
		}
		v.regs = append(v.regs, viewRegion{host: sliceAddr(r.data), size: r.Size, off: cur + (r.MmapOffset - start)})
		cur += end - start
	}
	return v, nil
}

// Bytes is the whole range: every region, each starting on a page boundary
// (plus its mmap offset's remainder).
func (v *GuestView) Bytes() []byte { return v.mem }

// Locate returns where buf, a slice of the memory table's mappings (such as
// a Chain's buffers), lies in the view: the offset of its first byte, and
// the region it lies in as the half-open range [lo, hi) of offsets. ok is
// false when buf does not lie entirely inside one region.
func (v *GuestView) Locate(buf []byte) (off, lo, hi uint64, ok bool) {
	a := sliceAddr(buf)
	n := uint64(len(buf))
	for _, r := range v.regs {
		if a < r.host {
			continue
		}
		d := uint64(a - r.host)
		if d >= r.size || n > r.size-d {
			continue
		}
		return r.off + d, r.off, r.off + r.size, true
	}
	return 0, 0, 0, false
}

// Close unmaps the view (never the table's own mappings). Close every
// AF_XDP socket whose UMEM it is first: the kernel keeps writing into
// pinned pages until the socket is gone. Close is idempotent.
func (v *GuestView) Close() error {
	if v == nil || v.mem == nil {
		return nil
	}
	err := unix.Munmap(v.mem)
	v.mem, v.regs = nil, nil
	if err != nil {
		return fmt.Errorf("unmap contiguous guest view: %w", err)
	}
	return nil
}
