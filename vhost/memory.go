package vhost

import (
	"errors"
	"fmt"
	"math"

	"golang.org/x/sys/unix"
)

// MaxMemoryRegions is the number of regions a memory table may hold. It is
// the vhost-user baseline (VHOST_MEMORY_BASELINE_NREGIONS); the back-end does
// not offer VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS.
const MaxMemoryRegions = 8

// ErrOutOfRange is wrapped by translation errors: the range is not entirely
// inside one region of guest memory.
var ErrOutOfRange = errors.New("range outside guest memory")

// MemoryRegion is one region of VHOST_USER_SET_MEM_TABLE.
type MemoryRegion struct {
	GuestPhysAddr uint64 // guest-physical address of the first byte
	Size          uint64 // length in bytes
	UserAddr      uint64 // the front-end's virtual address of the first byte
	MmapOffset    uint64 // offset of the first byte in the region's fd
}

func (r MemoryRegion) String() string {
	return fmt.Sprintf("gpa=%#x size=%#x uva=%#x off=%#x", r.GuestPhysAddr, r.Size, r.UserAddr, r.MmapOffset)
}

type mappedRegion struct {
	MemoryRegion
	mapping []byte // the whole mmap, for munmap
	data    []byte // Size bytes starting at MmapOffset
	seal    Sealing
}

// Sealing says whether the front-end can still shrink the file behind a
// region after the back-end mapped it. Touching a shared mapping beyond the
// end of its file faults (SIGBUS); the device survives that (it breaks the
// queue and closes the connection), but a sealed file cannot shrink at all.
type Sealing int

const (
	// Sealed: a memfd the front-end sealed with F_SEAL_SHRINK (QEMU's
	// memory-backend-memfd does).
	Sealed Sealing = iota
	// SealedByBackend: a memfd that allowed sealing but had no
	// F_SEAL_SHRINK; NewMemoryTable added it.
	SealedByBackend
	// Shrinkable: a file that cannot be sealed (hugetlbfs or tmpfs files
	// not made by memfd_create, a memfd made without MFD_ALLOW_SEALING, a
	// file on another file system): the front-end can truncate it.
	Shrinkable
)

func (s Sealing) String() string {
	switch s {
	case Sealed:
		return "sealed by the front-end"
	case SealedByBackend:
		return "sealed against shrinking by the back-end"
	case Shrinkable:
		return "not sealable: the front-end can shrink it"
	}
	return fmt.Sprintf("Sealing(%d)", int(s))
}

// sealShrink makes sure the file of fd cannot shrink while it is mapped: it
// adds F_SEAL_SHRINK to a memfd that allows sealing and lacks it. Growing
// and writing stay allowed, so a front-end that behaves is not affected.
func sealShrink(fd int) Sealing {
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	switch {
	case err != nil: // not shmem or hugetlbfs: no seals on this file system
		return Shrinkable
	case seals&unix.F_SEAL_SHRINK != 0:
		return Sealed
	case seals&unix.F_SEAL_SEAL != 0: // sealing not allowed (or sealed without SHRINK)
		return Shrinkable
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK); err != nil {
		return Shrinkable
	}
	return SealedByBackend
}

// MemoryTable is the guest memory shared by a front-end: each region's fd is
// mapped once (MAP_SHARED) and unmapped by Close. Translations return slices
// into the mappings; they are valid until Close. A MemoryTable is safe for
// concurrent translations; Close must not race with them.
type MemoryTable struct {
	regions []mappedRegion
}

// NewMemoryTable validates regions and maps fds[i] for regions[i]. It takes
// ownership of fds: they are closed before it returns, whatever the outcome
// (the mappings keep the memory alive). A memfd that allows sealing and
// lacks F_SEAL_SHRINK is sealed against shrinking first (see Sealing); then
// each region must lie inside its file as it is.
func NewMemoryTable(regions []MemoryRegion, fds []int) (_ *MemoryTable, err error) {
	defer closeFDs(fds)
	if len(regions) != len(fds) {
		return nil, fmt.Errorf("memory table: %d regions but %d fds", len(regions), len(fds))
	}
	if len(regions) == 0 || len(regions) > MaxMemoryRegions {
		return nil, fmt.Errorf("memory table: %d regions, want 1 to %d", len(regions), MaxMemoryRegions)
	}
	for i, r := range regions {
		if err := validateRegion(r); err != nil {
			return nil, fmt.Errorf("memory table: region %d (%v): %w", i, r, err)
		}
		for j := range i {
			o := regions[j]
			if overlaps(r.GuestPhysAddr, r.Size, o.GuestPhysAddr, o.Size) {
				return nil, fmt.Errorf("memory table: regions %d and %d overlap in guest-physical space", j, i)
			}
			if overlaps(r.UserAddr, r.Size, o.UserAddr, o.Size) {
				return nil, fmt.Errorf("memory table: regions %d and %d overlap in front-end address space", j, i)
			}
		}
	}

	m := &MemoryTable{regions: make([]mappedRegion, 0, len(regions))}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	for i, r := range regions {
		end := r.MmapOffset + r.Size // no overflow: validated
		seal := sealShrink(fds[i])   // before the size check: it cannot drop after it
		var st unix.Stat_t
		if err := unix.Fstat(fds[i], &st); err != nil {
			return nil, fmt.Errorf("memory table: region %d: fstat: %w", i, err)
		}
		// Touching a shared mapping beyond the end of its file raises
		// SIGBUS, so a region must lie inside the file as it is now.
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			return nil, fmt.Errorf("memory table: region %d: fd is not a regular file (mode %#o)", i, st.Mode)
		}
		if st.Size < 0 || uint64(st.Size) < end {
			return nil, fmt.Errorf("memory table: region %d (%v) ends at %#x (mmap_offset+size), beyond the end of its file (%#x bytes): the front-end must share a file at least that long", i, r, end, st.Size)
		}
		mapping, err := unix.Mmap(fds[i], 0, int(end), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_NORESERVE)
		if err != nil {
			return nil, fmt.Errorf("memory table: region %d (%v): mmap %d bytes: %w", i, r, end, err)
		}
		m.regions = append(m.regions, mappedRegion{
			MemoryRegion: r,
			mapping:      mapping,
			data:         mapping[r.MmapOffset:end:end],
			seal:         seal,
		})
	}
	return m, nil
}

func validateRegion(r MemoryRegion) error {
	switch {
	case r.Size == 0:
		return errors.New("empty region")
	case r.GuestPhysAddr > math.MaxUint64-r.Size:
		return errors.New("guest-physical range overflows")
	case r.UserAddr > math.MaxUint64-r.Size:
		return errors.New("front-end address range overflows")
	case r.MmapOffset > math.MaxUint64-r.Size, r.MmapOffset+r.Size > math.MaxInt/2:
		return errors.New("mmap range too large")
	}
	return nil
}

// overlaps reports whether [a, a+al) and [b, b+bl) intersect; neither range
// overflows.
func overlaps(a, al, b, bl uint64) bool {
	return a < b+bl && b < a+al
}

// Regions returns the table's regions.
func (m *MemoryTable) Regions() []MemoryRegion {
	out := make([]MemoryRegion, len(m.regions))
	for i, r := range m.regions {
		out[i] = r.MemoryRegion
	}
	return out
}

// Sealing returns, for each region, whether its file can still shrink.
func (m *MemoryTable) Sealing() []Sealing {
	out := make([]Sealing, len(m.regions))
	for i, r := range m.regions {
		out[i] = r.seal
	}
	return out
}

// locate names the region whose mapping holds the address addr of this
// process, and the offset of addr in that region's file.
func (m *MemoryTable) locate(addr uintptr) (region int, fileOff uint64, ok bool) {
	if m == nil {
		return 0, 0, false
	}
	for i, r := range m.regions {
		if len(r.mapping) == 0 {
			continue
		}
		base := sliceAddr(r.mapping)
		if addr >= base && addr-base < uintptr(len(r.mapping)) {
			return i, uint64(addr - base), true
		}
	}
	return 0, 0, false
}

// Guest returns the bytes [gpa, gpa+length) of guest-physical memory. The
// range must lie inside one region; a zero length yields an empty slice for
// any address inside (or at the end of) a region.
func (m *MemoryTable) Guest(gpa, length uint64) ([]byte, error) {
	for i := range m.regions {
		r := &m.regions[i]
		if b, ok := sub(r.data, r.GuestPhysAddr, gpa, length); ok {
			return b, nil
		}
	}
	return nil, fmt.Errorf("guest-physical [%#x, +%#x): %w", gpa, length, ErrOutOfRange)
}

// User returns the bytes [uva, uva+length) addressed in the front-end's
// virtual address space, as vring addresses of VHOST_USER_SET_VRING_ADDR are.
func (m *MemoryTable) User(uva, length uint64) ([]byte, error) {
	for i := range m.regions {
		r := &m.regions[i]
		if b, ok := sub(r.data, r.UserAddr, uva, length); ok {
			return b, nil
		}
	}
	return nil, fmt.Errorf("front-end address [%#x, +%#x): %w", uva, length, ErrOutOfRange)
}

// sub returns data[addr-base : addr-base+length] when that range is inside
// data, without any arithmetic that could overflow.
func sub(data []byte, base, addr, length uint64) ([]byte, bool) {
	size := uint64(len(data))
	if addr < base || length > size {
		return nil, false
	}
	off := addr - base
	if off > size-length {
		return nil, false
	}
	end := off + length
	return data[off:end:end], true
}

// Close unmaps every region. Slices returned by translations must not be
// used afterwards. Close is idempotent.
func (m *MemoryTable) Close() error {
	if m == nil {
		return nil
	}
	var errs []error
	for _, r := range m.regions {
		if err := unix.Munmap(r.mapping); err != nil {
			errs = append(errs, fmt.Errorf("munmap region %v: %w", r.MemoryRegion, err))
		}
	}
	m.regions = nil
	return errors.Join(errs...)
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}
