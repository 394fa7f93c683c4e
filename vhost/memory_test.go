package vhost

import (
	"errors"
	"math"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMemoryTranslate(t *testing.T) {
	g := newGuestMem(t, 0x10000, 0x20000)
	m := g.table(t)
	r0, r1 := g.regions[0], g.regions[1]
	copy(r0.buf, "region0")
	copy(r1.buf[0x1fffc:], "end!")

	tests := []struct {
		name   string
		user   bool
		addr   uint64
		length uint64
		want   string // prefix of the result; "" with ok: any
		ok     bool
	}{
		{"start of region 0", false, r0.GuestPhysAddr, 7, "region0", true},
		{"end of region 1", false, r1.GuestPhysAddr + 0x1fffc, 4, "end!", true},
		{"zero length at end", false, r1.GuestPhysAddr + r1.Size, 0, "", true},
		{"whole region", false, r1.GuestPhysAddr, r1.Size, "", true},
		{"crosses regions", false, r0.GuestPhysAddr + r0.Size - 4, 8, "", false},
		{"past the end", false, r1.GuestPhysAddr + r1.Size - 3, 4, "", false},
		{"below memory", false, 0, 16, "", false},
		{"address overflow", false, math.MaxUint64 - 1, 16, "", false},
		{"length overflow", false, r0.GuestPhysAddr + 8, math.MaxUint64, "", false},
		{"larger than region", false, r0.GuestPhysAddr, r0.Size + 1, "", false},
		{"user address", true, r0.UserAddr, 7, "region0", true},
		{"user address of region 1", true, r1.UserAddr + 0x1fffc, 4, "end!", true},
		{"gpa is not a user address", true, r0.GuestPhysAddr, 1, "", false},
		{"user address is not a gpa", false, r0.UserAddr, 1, "", false},
		{"user address overflow", true, math.MaxUint64, 1, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b []byte
			var err error
			if tt.user {
				b, err = m.User(tt.addr, tt.length)
			} else {
				b, err = m.Guest(tt.addr, tt.length)
			}
			if !tt.ok {
				if !errors.Is(err, ErrOutOfRange) {
					t.Fatalf("got %d bytes, err %v; want ErrOutOfRange", len(b), err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if uint64(len(b)) != tt.length || uint64(cap(b)) != tt.length {
				t.Fatalf("len %d cap %d, want %d", len(b), cap(b), tt.length)
			}
			if string(b[:len(tt.want)]) != tt.want {
				t.Fatalf("got %q, want %q", b[:len(tt.want)], tt.want)
			}
		})
	}
	// Writes through a translation reach the guest.
	b, _ := m.Guest(r1.GuestPhysAddr+100, 3)
	copy(b, "abc")
	if string(r1.buf[100:103]) != "abc" {
		t.Fatal("write through translation not visible to the guest")
	}
}

func fdOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}

func TestMemoryTableInvalid(t *testing.T) {
	g := newGuestMem(t, 0x10000, 0x10000)
	good := g.layout()
	mod := func(f func(r []MemoryRegion) []MemoryRegion) []MemoryRegion {
		r := append([]MemoryRegion(nil), good...)
		return f(r)
	}
	tests := []struct {
		name    string
		regions []MemoryRegion
		nfds    int
	}{
		{"no regions", nil, 0},
		{"fd count mismatch", good, 1},
		{"too many regions", make([]MemoryRegion, MaxMemoryRegions+1), MaxMemoryRegions + 1},
		{"empty region", mod(func(r []MemoryRegion) []MemoryRegion { r[1].Size = 0; return r }), 2},
		{"gpa overlap", mod(func(r []MemoryRegion) []MemoryRegion { r[1].GuestPhysAddr = r[0].GuestPhysAddr + 8; return r }), 2},
		{"uva overlap", mod(func(r []MemoryRegion) []MemoryRegion { r[1].UserAddr = r[0].UserAddr + r[0].Size - 1; return r }), 2},
		{"gpa overflow", mod(func(r []MemoryRegion) []MemoryRegion { r[1].GuestPhysAddr = math.MaxUint64 - 8; return r }), 2},
		{"uva overflow", mod(func(r []MemoryRegion) []MemoryRegion { r[1].UserAddr = math.MaxUint64 - 8; return r }), 2},
		{"offset overflow", mod(func(r []MemoryRegion) []MemoryRegion { r[1].MmapOffset = math.MaxUint64 - 8; return r }), 2},
		{"beyond end of file", mod(func(r []MemoryRegion) []MemoryRegion { r[1].MmapOffset = 4096; return r }), 2},
		{"huge", mod(func(r []MemoryRegion) []MemoryRegion { r[1].Size = 1 << 62; return r }), 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var fds []int
			for i := range tt.nfds {
				fd, err := unix.Dup(g.regions[i%2].fd)
				if err != nil {
					t.Fatal(err)
				}
				fds = append(fds, fd)
			}
			m, err := NewMemoryTable(tt.regions, fds)
			if err == nil {
				m.Close()
				t.Fatal("NewMemoryTable accepted an invalid table")
			}
			t.Log(err)
			for _, fd := range fds {
				if fdOpen(fd) {
					t.Errorf("fd %d left open", fd)
				}
			}
		})
	}
	t.Run("not a regular file", func(t *testing.T) {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(p[1])
		_, err := NewMemoryTable([]MemoryRegion{{GuestPhysAddr: 0, Size: 4096}}, []int{p[0]})
		if err == nil {
			t.Fatal("accepted a pipe")
		}
		if fdOpen(p[0]) {
			t.Error("pipe fd left open")
		}
	})
}

func TestMemoryTableOwnsFDsAndUnmaps(t *testing.T) {
	g := newGuestMem(t, 0x10000)
	fds := g.dupFDs(t)
	m, err := NewMemoryTable(g.layout(), fds)
	if err != nil {
		t.Fatal(err)
	}
	if fdOpen(fds[0]) {
		t.Error("fd still open after mapping")
	}
	before := countMaps(t, "guest0")
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	if after := countMaps(t, "guest0"); after != before-1 {
		t.Errorf("mappings of the memfd: %d before Close, %d after", before, after)
	}
	if _, err := m.Guest(testGPABase, 1); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("translation after Close: %v", err)
	}
}
