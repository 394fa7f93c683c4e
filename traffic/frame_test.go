package traffic

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
)

var testSpec = FrameSpec{
	Dst:     net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01},
	Src:     net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02},
	SrcIP:   netip.MustParseAddr("10.1.2.3"),
	DstIP:   netip.MustParseAddr("10.9.8.7"),
	SrcPort: 4000,
	DstPort: 5000,
	Size:    128,
	Tag:     0xbeef,
}

func TestBuildLayout(t *testing.T) {
	buf := make([]byte, 2048)
	for i := range buf {
		buf[i] = 0xaa // Build must clear what it does not write
	}
	n, err := testSpec.Build(buf, 0x01020304)
	if err != nil {
		t.Fatal(err)
	}
	if n != 128 {
		t.Fatalf("length %d, want 128", n)
	}
	f := buf[:n]
	if !bytes.Equal(f[0:6], testSpec.Dst) || !bytes.Equal(f[6:12], testSpec.Src) {
		t.Errorf("MACs % x", f[0:12])
	}
	if et := binary.BigEndian.Uint16(f[12:14]); et != 0x0800 {
		t.Errorf("ethertype %#x", et)
	}
	ip := f[14:34]
	if ip[0] != 0x45 || ip[8] != 64 || ip[9] != 17 {
		t.Errorf("IPv4 header % x", ip)
	}
	if tl := binary.BigEndian.Uint16(ip[2:4]); tl != 128-14 {
		t.Errorf("IPv4 total length %d", tl)
	}
	if netip.AddrFrom4([4]byte(ip[12:16])) != testSpec.SrcIP || netip.AddrFrom4([4]byte(ip[16:20])) != testSpec.DstIP {
		t.Errorf("addresses % x", ip[12:20])
	}
	// A correct header sums (with its checksum) to 0xffff.
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	if sum != 0xffff {
		t.Errorf("IPv4 checksum %#x does not verify (sum %#x)", binary.BigEndian.Uint16(ip[10:12]), sum)
	}
	udp := f[34:42]
	if binary.BigEndian.Uint16(udp[0:2]) != 4000 || binary.BigEndian.Uint16(udp[2:4]) != 5000 ||
		binary.BigEndian.Uint16(udp[4:6]) != 128-34 || binary.BigEndian.Uint16(udp[6:8]) != 0 {
		t.Errorf("UDP header % x", udp)
	}
	m, ok := ParseMarker(f)
	if !ok || m != (Marker{Tag: 0xbeef, Seq: 0x01020304}) {
		t.Errorf("marker %+v %v", m, ok)
	}
	for i, b := range f[HeaderLen+MarkerLen:] {
		if b != 0 {
			t.Fatalf("padding byte %d is %#x", HeaderLen+MarkerLen+i, b)
		}
	}
	if buf[n] != 0xaa {
		t.Error("Build wrote past the frame")
	}
}

// The checksum of a known header, computed independently (Python, RFC 1071
// one's complement sum of 4500 003c 0000 0000 4011 0000 c0a8 0001 c0a8 00c7).
func TestBuildChecksumKnown(t *testing.T) {
	s := FrameSpec{SrcIP: netip.MustParseAddr("192.168.0.1"), DstIP: netip.MustParseAddr("192.168.0.199"), Size: 60 + 14}
	buf := make([]byte, 128)
	if _, err := s.Build(buf, 0); err != nil {
		t.Fatal(err)
	}
	want := uint16(0xf898)
	if got := binary.BigEndian.Uint16(buf[24:26]); got != want {
		t.Errorf("checksum %#04x, want %#04x", got, want)
	}
}

func TestBuildSizes(t *testing.T) {
	buf := make([]byte, MaxFrame+1)
	for _, c := range []struct{ size, want int }{{0, 64}, {10, 64}, {64, 64}, {65, 65}, {1514, 1514}, {MaxFrame, MaxFrame}} {
		s := testSpec
		s.Size = c.size
		n, err := s.Build(buf, 7)
		if err != nil || n != c.want {
			t.Errorf("size %d: %d, %v; want %d", c.size, n, err, c.want)
			continue
		}
		if m, ok := ParseMarker(buf[:n]); !ok || m.Seq != 7 {
			t.Errorf("size %d: marker %+v %v", c.size, m, ok)
		}
	}
	bad := []FrameSpec{
		{Size: MaxFrame + 1},
		{Dst: net.HardwareAddr{1, 2, 3}},
		{Src: make(net.HardwareAddr, 8)},
		{SrcIP: netip.MustParseAddr("::1")},
		{DstIP: netip.MustParseAddr("fe80::1")},
	}
	for _, s := range bad {
		if _, err := s.Build(buf, 0); err == nil {
			t.Errorf("Build(%+v) succeeded", s)
		}
	}
	if _, err := testSpec.Build(make([]byte, 127), 0); err == nil {
		t.Error("Build into a short buffer succeeded")
	}
}

func TestBuildZeroValueSpec(t *testing.T) {
	buf := make([]byte, 64)
	n, err := FrameSpec{}.Build(buf, 1)
	if err != nil || n != 64 {
		t.Fatal(n, err)
	}
	if m, ok := ParseMarker(buf); !ok || m != (Marker{Seq: 1}) {
		t.Errorf("marker %+v %v", m, ok)
	}
}

func TestBuildAllocs(t *testing.T) {
	buf := make([]byte, 1500)
	seq := uint32(0)
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := testSpec.Build(buf, seq); err != nil {
			t.Fatal(err)
		}
		if _, ok := ParseMarker(buf); !ok {
			t.Fatal("no marker")
		}
		seq++
	})
	if allocs != 0 {
		t.Errorf("Build+ParseMarker allocate %v times per frame", allocs)
	}
}

func TestParseMarkerRejects(t *testing.T) {
	buf := make([]byte, 128)
	n, _ := testSpec.Build(buf, 1)
	good := buf[:n]
	mutate := func(f func(b []byte)) []byte {
		b := append([]byte(nil), good...)
		f(b)
		return b
	}
	for name, b := range map[string][]byte{
		"nil":        nil,
		"short":      good[:MinFrame-1],
		"ipv6":       mutate(func(b []byte) { b[12], b[13] = 0x86, 0xdd }),
		"ip options": mutate(func(b []byte) { b[14] = 0x46 }),
		"tcp":        mutate(func(b []byte) { b[23] = 6 }),
		"magic":      mutate(func(b []byte) { b[HeaderLen] ^= 1 }),
	} {
		if m, ok := ParseMarker(b); ok {
			t.Errorf("%s: parsed %+v", name, m)
		}
	}
	if _, ok := ParseMarker(good[:MinFrame]); !ok {
		t.Error("a frame cut right after the marker has lost it")
	}
	if m, ok := ParsePayloadMarker(good[HeaderLen:]); !ok || m.Tag != testSpec.Tag {
		t.Errorf("payload marker %+v %v", m, ok)
	}
}

func FuzzParseMarker(f *testing.F) {
	buf := make([]byte, 128)
	n, _ := testSpec.Build(buf, 42)
	f.Add(buf[:n])
	f.Add(buf[:MinFrame])
	f.Add([]byte{})
	f.Add(make([]byte, MinFrame))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, ok := ParseMarker(b)
		if !ok {
			if m != (Marker{}) {
				t.Fatalf("no marker but %+v", m)
			}
			return
		}
		// A marker found is exactly what a rebuild with its values writes.
		if len(b) < MinFrame || binary.BigEndian.Uint32(b[HeaderLen:]) != MarkerMagic {
			t.Fatalf("marker %+v in a frame without one", m)
		}
		var p [MarkerLen]byte
		putMarker(p[:], m)
		if !bytes.Equal(p[:], b[HeaderLen:MinFrame]) {
			t.Fatalf("marker %+v does not round-trip: % x", m, b[HeaderLen:MinFrame])
		}
	})
}
