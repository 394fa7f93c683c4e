package vhost

import (
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Test guest memory: memfds mapped by the test (the "guest" view) and handed
// to the code under test like a front-end would.

const (
	testGPABase = 0x100000
	testUVABase = 0x7f0000000000
	testMmapOff = 4096 // region 0 starts at this offset in its memfd
)

type guestRegion struct {
	MemoryRegion
	fd      int
	buf     []byte
	mapping []byte
}

type guestMem struct {
	regions []guestRegion
	next    uint64 // bump allocator, GPA
}

func testLogger(tb testing.TB) *slog.Logger {
	if os.Getenv("VHOST_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// backing makes the file behind region i of guest memory, size bytes long,
// and returns its fd (read-write).
type backing func(tb testing.TB, i int, size int64) int

// memfdBacking: a memfd made without MFD_ALLOW_SEALING (it cannot be
// sealed, and it can shrink).
func memfdBacking(tb testing.TB, i int, size int64) int {
	tb.Helper()
	fd, err := unix.MemfdCreate(fmt.Sprintf("guest%d", i), unix.MFD_CLOEXEC)
	if err != nil {
		tb.Fatalf("memfd_create: %v", err)
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		tb.Fatalf("ftruncate: %v", err)
	}
	return fd
}

// newGuestMem makes memfd regions of the given sizes, contiguous in
// guest-physical space and far apart in the front-end's address space.
func newGuestMem(tb testing.TB, sizes ...uint64) *guestMem {
	tb.Helper()
	return newGuestMemOn(tb, memfdBacking, sizes...)
}

// newGuestMemOn is newGuestMem with files made by back.
func newGuestMemOn(tb testing.TB, back backing, sizes ...uint64) *guestMem {
	tb.Helper()
	g := &guestMem{}
	gpa := uint64(testGPABase)
	for i, size := range sizes {
		off := uint64(0)
		if i == 0 {
			off = testMmapOff
		}
		fd := back(tb, i, int64(off+size))
		m, err := unix.Mmap(fd, 0, int(off+size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			tb.Fatalf("mmap: %v", err)
		}
		r := guestRegion{
			MemoryRegion: MemoryRegion{GuestPhysAddr: gpa, Size: size, UserAddr: testUVABase + uint64(i)<<32, MmapOffset: off},
			fd:           fd,
			buf:          m[off:],
			mapping:      m,
		}
		g.regions = append(g.regions, r)
		gpa += size
	}
	tb.Cleanup(g.release)
	g.next = testGPABase
	return g
}

// release unmaps and closes the guest memory (idempotent).
func (g *guestMem) release() {
	for i := range g.regions {
		r := &g.regions[i]
		if r.fd >= 0 {
			unix.Munmap(r.mapping)
			unix.Close(r.fd)
			r.fd, r.buf, r.mapping = -1, nil, nil
		}
	}
}

func (g *guestMem) layout() []MemoryRegion {
	var out []MemoryRegion
	for _, r := range g.regions {
		out = append(out, r.MemoryRegion)
	}
	return out
}

// dupFDs returns fresh fds for the regions, as SCM_RIGHTS would deliver them.
func (g *guestMem) dupFDs(tb testing.TB) []int {
	tb.Helper()
	var fds []int
	for _, r := range g.regions {
		fd, err := unix.Dup(r.fd)
		if err != nil {
			tb.Fatalf("dup: %v", err)
		}
		fds = append(fds, fd)
	}
	return fds
}

func (g *guestMem) table(tb testing.TB) *MemoryTable {
	tb.Helper()
	m, err := NewMemoryTable(g.layout(), g.dupFDs(tb))
	if err != nil {
		tb.Fatalf("NewMemoryTable: %v", err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

// at returns the guest's view of [gpa, gpa+n).
func (g *guestMem) at(gpa, n uint64) []byte {
	for _, r := range g.regions {
		if gpa >= r.GuestPhysAddr && gpa+n <= r.GuestPhysAddr+r.Size {
			o := gpa - r.GuestPhysAddr
			return r.buf[o : o+n]
		}
	}
	panic(fmt.Sprintf("test bug: gpa %#x+%d outside guest memory", gpa, n))
}

func (g *guestMem) uva(gpa uint64) uint64 {
	for _, r := range g.regions {
		if gpa >= r.GuestPhysAddr && gpa < r.GuestPhysAddr+r.Size {
			return gpa - r.GuestPhysAddr + r.UserAddr
		}
	}
	panic(fmt.Sprintf("test bug: gpa %#x outside guest memory", gpa))
}

// alloc returns n bytes of guest memory aligned to align, from region 0.
func (g *guestMem) alloc(n, align uint64) uint64 {
	g.next = (g.next + align - 1) &^ (align - 1)
	a := g.next
	g.next += n
	g.at(a, n) // bounds check
	return a
}

// guestRing is the driver side of a split virtqueue.
type guestRing struct {
	g                 *guestMem
	size              uint16
	desc, avail, used uint64 // GPAs
	nextAvail         uint16
	lastUsed          uint16
}

func newGuestRing(g *guestMem, size uint16) *guestRing {
	n := uint64(size)
	r := &guestRing{g: g, size: size}
	r.desc = g.alloc(16*n, 16)
	r.avail = g.alloc(6+2*n, 2)
	r.used = g.alloc(6+8*n, 4)
	g.alloc(0, 4096)
	return r
}

func (r *guestRing) config(index int) VirtqueueConfig {
	return VirtqueueConfig{
		Index: index, Size: r.size,
		DescAddr: r.g.uva(r.desc), AvailAddr: r.g.uva(r.avail), UsedAddr: r.g.uva(r.used),
	}
}

func (r *guestRing) setDesc(i int, addr uint64, l uint32, flags, next uint16) {
	b := r.g.at(r.desc+16*uint64(i), 16)
	putDesc(b, addr, l, flags, next)
}

func putDesc(b []byte, addr uint64, l uint32, flags, next uint16) {
	binary.LittleEndian.PutUint64(b[0:], addr)
	binary.LittleEndian.PutUint32(b[8:], l)
	binary.LittleEndian.PutUint16(b[12:], flags)
	binary.LittleEndian.PutUint16(b[14:], next)
}

// offer puts heads on the avail ring and publishes them.
func (r *guestRing) offer(heads ...uint16) {
	for _, h := range heads {
		binary.LittleEndian.PutUint16(r.g.at(r.avail+4+2*uint64(r.nextAvail%r.size), 2), h)
		r.nextAvail++
	}
	r.setAvailIdx(r.nextAvail)
}

func (r *guestRing) setAvailIdx(v uint16) {
	binary.LittleEndian.PutUint16(r.g.at(r.avail+2, 2), v)
}

func (r *guestRing) setAvailFlags(v uint16) {
	binary.LittleEndian.PutUint16(r.g.at(r.avail, 2), v)
}

func (r *guestRing) setUsedEvent(v uint16) {
	binary.LittleEndian.PutUint16(r.g.at(r.avail+4+2*uint64(r.size), 2), v)
}

func (r *guestRing) availEvent() uint16 {
	return binary.LittleEndian.Uint16(r.g.at(r.used+4+8*uint64(r.size), 2))
}

func (r *guestRing) usedFlags() uint16 { return binary.LittleEndian.Uint16(r.g.at(r.used, 2)) }
func (r *guestRing) usedIdx() uint16   { return binary.LittleEndian.Uint16(r.g.at(r.used+2, 2)) }

func (r *guestRing) setUsedIdx(v uint16) {
	binary.LittleEndian.PutUint16(r.g.at(r.used+2, 2), v)
	r.lastUsed = v
}

type usedElem struct {
	id, len uint32
}

// takeUsed returns the used entries published since the last call.
func (r *guestRing) takeUsed() []usedElem {
	var out []usedElem
	for idx := r.usedIdx(); r.lastUsed != idx; r.lastUsed++ {
		b := r.g.at(r.used+4+8*uint64(r.lastUsed%r.size), 8)
		out = append(out, usedElem{binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint32(b[4:])})
	}
	return out
}

// countMaps counts the mappings in /proc/self/maps whose line mentions name.
func countMaps(tb testing.TB, name string) int {
	tb.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		tb.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "memfd:"+name+" ") || strings.HasSuffix(l, "memfd:"+name) || strings.Contains(l, "memfd:"+name+" (deleted)") {
			n++
		}
	}
	return n
}

// countFDs counts the open fds of the process.
func countFDs(tb testing.TB) int {
	tb.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		tb.Fatal(err)
	}
	return len(ents)
}
