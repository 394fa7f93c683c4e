// Package traffic makes and counts test traffic for xdp-hostd's demo, tests
// and benchmarks: Ethernet/IPv4/UDP frames carrying a marker (which VM a
// frame was aimed at, and its sequence number), a sender that aims frames at
// one RX queue of a veth's peer, a high-rate source using BPF_PROG_RUN live
// frames, and a reader that counts marked frames from tap queues.
package traffic

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

// Marker is what every frame built here carries at the start of its UDP
// payload: the magic MarkerMagic (4 bytes), Tag (2) and Seq (4), big endian.
// A receiver tells by Tag which VM (or the host) a frame was aimed at, and by
// Seq whether it saw a frame twice.
type Marker struct {
	Tag uint16 // who the frame is for (a VM, the host)
	Seq uint32
}

const (
	// MarkerMagic opens every marker ("XHMK").
	MarkerMagic = 0x58484d4b
	// MarkerLen is the marker's length in bytes.
	MarkerLen = 10
	ethLen    = 14
	ipLen     = 20
	udpLen    = 8
	// HeaderLen is the Ethernet + IPv4 + UDP header length of built frames.
	HeaderLen = ethLen + ipLen + udpLen
	// MinFrame is the shortest frame that carries a marker (Build makes
	// frames of at least 64 bytes).
	MinFrame = HeaderLen + MarkerLen
)

// FrameSpec describes the frames to build. The zero addresses are allowed
// (a frame for BPF_PROG_RUN needs no real addresses).
type FrameSpec struct {
	Dst, Src         net.HardwareAddr
	SrcIP, DstIP     netip.Addr // IPv4; zero means 0.0.0.0
	SrcPort, DstPort uint16
	Size             int // whole frame, without FCS; default and minimum 64
	Tag              uint16
}

// MaxFrame is the largest frame Build makes.
const MaxFrame = 9000

// Build writes the frame with sequence number seq into buf and returns its
// length: Ethernet, IPv4 (no options, header checksum set), UDP (checksum 0,
// which IPv4 allows), then the marker, then zero padding up to Size. It
// allocates nothing unless it fails.
func (s FrameSpec) Build(buf []byte, seq uint32) (int, error) {
	size := max(s.Size, 64)
	if size > MaxFrame {
		return 0, fmt.Errorf("frame size %d: at most %d", size, MaxFrame)
	}
	if len(buf) < size {
		return 0, fmt.Errorf("frame of %d bytes does not fit a %d-byte buffer", size, len(buf))
	}
	if (len(s.Dst) != 0 && len(s.Dst) != 6) || (len(s.Src) != 0 && len(s.Src) != 6) {
		return 0, fmt.Errorf("frame MACs %v, %v: want 6 bytes (or none)", s.Dst, s.Src)
	}
	if (s.SrcIP.IsValid() && !s.SrcIP.Is4()) || (s.DstIP.IsValid() && !s.DstIP.Is4()) {
		return 0, fmt.Errorf("frame addresses %v, %v: IPv4 only", s.SrcIP, s.DstIP)
	}
	b := buf[:size]
	clear(b)
	copy(b[0:6], s.Dst)
	copy(b[6:12], s.Src)
	binary.BigEndian.PutUint16(b[12:14], 0x0800)

	ip := b[ethLen : ethLen+ipLen]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(size-ethLen))
	ip[8] = 64 // TTL
	ip[9] = 17 // UDP
	if s.SrcIP.Is4() {
		a := s.SrcIP.As4()
		copy(ip[12:16], a[:])
	}
	if s.DstIP.Is4() {
		a := s.DstIP.As4()
		copy(ip[16:20], a[:])
	}
	binary.BigEndian.PutUint16(ip[10:12], ipChecksum(ip))

	udp := b[ethLen+ipLen : HeaderLen]
	binary.BigEndian.PutUint16(udp[0:2], s.SrcPort)
	binary.BigEndian.PutUint16(udp[2:4], s.DstPort)
	binary.BigEndian.PutUint16(udp[4:6], uint16(size-ethLen-ipLen))
	// UDP checksum 0: none, valid for IPv4.

	putMarker(b[HeaderLen:], Marker{Tag: s.Tag, Seq: seq})
	return size, nil
}

func putMarker(p []byte, m Marker) {
	binary.BigEndian.PutUint32(p[0:4], MarkerMagic)
	binary.BigEndian.PutUint16(p[4:6], m.Tag)
	binary.BigEndian.PutUint32(p[6:10], m.Seq)
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// ParseMarker reads the marker of a frame Build made (IPv4 without options,
// UDP). It never panics, whatever the input.
func ParseMarker(frame []byte) (Marker, bool) {
	if len(frame) < MinFrame || binary.BigEndian.Uint16(frame[12:14]) != 0x0800 ||
		frame[ethLen] != 0x45 || frame[ethLen+9] != 17 {
		return Marker{}, false
	}
	return ParsePayloadMarker(frame[HeaderLen:])
}

// ParsePayloadMarker reads the marker at the start of a UDP payload.
func ParsePayloadMarker(p []byte) (Marker, bool) {
	if len(p) < MarkerLen || binary.BigEndian.Uint32(p[0:4]) != MarkerMagic {
		return Marker{}, false
	}
	return Marker{Tag: binary.BigEndian.Uint16(p[4:6]), Seq: binary.BigEndian.Uint32(p[6:10])}, true
}
