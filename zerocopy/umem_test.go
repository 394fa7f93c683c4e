package zerocopy

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestUMEMValidates(t *testing.T) {
	mem, err := unix.Mmap(-1, 0, 4*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	for _, c := range []struct {
		name                string
		mem                 []byte
		frameSize, headroom int
	}{
		{"frame not a power of two", mem, 3000, 0},
		{"frame too small", mem, 1024, 0},
		{"not whole frames", mem[:4096+2048+1], 2048, 0},
		{"not page-aligned", mem[2048:], 2048, 0},
		{"empty", mem[:0], 2048, 0},
		{"headroom too large", mem, 2048, 2048 - 256},
		{"negative headroom", mem, 2048, -1},
	} {
		if _, err := NewUMEM(c.mem, c.frameSize, c.headroom); err == nil {
			t.Errorf("%s: NewUMEM succeeded", c.name)
		}
	}
	u, err := NewUMEM(mem, 2048, 128)
	if err != nil {
		t.Fatal(err)
	}
	if u.Frames() != 8 || u.FrameSize() != 2048 || u.Headroom() != 128 || u.MaxTXFrame() != 1920 {
		t.Fatalf("UMEM: %d frames of %d, headroom %d, max TX %d", u.Frames(), u.FrameSize(), u.Headroom(), u.MaxTXFrame())
	}
	if err := u.Close(); err != nil || len(mem) == 0 {
		t.Fatal("Close of a caller's UMEM must leave the memory alone", err)
	}
	mem[0] = 1 // still mapped
}

func TestUMEMFrameBounds(t *testing.T) {
	u, err := AllocUMEM(4, 2048)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for _, c := range []struct {
		d  Desc
		ok bool
	}{
		{Desc{Addr: 0, Len: 2048}, true},
		{Desc{Addr: 2048 + 256, Len: 60}, true},
		{Desc{Addr: 3*2048 + 2000, Len: 48}, true},
		{Desc{Addr: 2048 - 10, Len: 11}, false},      // crosses into the next frame
		{Desc{Addr: 3*2048 + 2000, Len: 49}, false},  // runs past the end
		{Desc{Addr: 4 * 2048, Len: 1}, false},        // outside
		{Desc{Addr: 1 << 63, Len: 1 << 31}, false},   // overflow
		{Desc{Addr: ^uint64(0) - 4, Len: 10}, false}, // wraps
	} {
		b := u.Frame(c.d)
		if (b != nil) != c.ok {
			t.Errorf("Frame(%+v) = %d bytes, want ok=%v", c.d, len(b), c.ok)
		}
		if b != nil && (len(b) != int(c.d.Len) || cap(b) != len(b)) {
			t.Errorf("Frame(%+v): len %d cap %d", c.d, len(b), cap(b))
		}
	}
	if u.FrameBase(3*2048+300) != 3*2048 {
		t.Error("FrameBase")
	}
}
