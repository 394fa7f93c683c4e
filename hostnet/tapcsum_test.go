package hostnet_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/traffic"
)

// partialCsumUDP is a virtio-net header asking for checksum offload
// (VIRTIO_NET_HDR_F_NEEDS_CSUM) and an Ethernet/IPv4/UDP frame whose UDP
// checksum holds only the pseudo-header sum, as a guest's kernel leaves it
// for the device to finish.
func partialCsumUDP(src, dst net.HardwareAddr, srcIP, dstIP net.IP, dport uint16, payload []byte) []byte {
	const vnetHdr, eth, ip4 = 10, 14, 20
	udpLen := 8 + len(payload)
	b := make([]byte, vnetHdr+eth+ip4+udpLen)
	b[0] = 1                                      // flags: NEEDS_CSUM
	binary.LittleEndian.PutUint16(b[6:], eth+ip4) // csum_start
	binary.LittleEndian.PutUint16(b[8:], 6)       // csum_offset: the UDP checksum
	f := b[vnetHdr:]
	copy(f[0:], dst)
	copy(f[6:], src)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[eth:]
	ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_UDP
	binary.BigEndian.PutUint16(ip[2:], uint16(ip4+udpLen))
	copy(ip[12:], srcIP.To4())
	copy(ip[16:], dstIP.To4())
	binary.BigEndian.PutUint16(ip[10:], ^fold(sum16(ip[:ip4])))
	udp := ip[ip4:]
	binary.BigEndian.PutUint16(udp[0:], 7009)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], uint16(udpLen))
	copy(udp[8:], payload)
	pseudo := sum16(ip[12:20]) + unix.IPPROTO_UDP + uint32(udpLen)
	binary.BigEndian.PutUint16(udp[6:], fold(pseudo)) // not complemented: partial
	return b
}

func sum16(b []byte) uint32 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	return s
}

func fold(s uint32) uint16 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// A guest behind QEMU's tap offloads its UDP/TCP checksums: QEMU writes
// its frames into the tap with a virtio-net header saying NEEDS_CSUM. The
// tap's transmit program must leave that to the kernel, which finishes
// the checksum: every datagram reaches a socket on the wire side. (With
// the program attached in native mode the tap ran it on the bare frame,
// the checksum stayed unfinished, and the wire side dropped them all as
// InCsumErrors.)
func TestTapTransmitKeepsChecksumOffload(t *testing.T) {
	topo := testnet.Topology(t, 1)
	dp := openDP(t, topo)
	tapName := testnet.UniqueName("tc")
	if _, err := dp.AddVM(hostnet.VMSpec{Name: "csum", MAC: mac1, Queues: []int{0}, Tap: tapName, TapMode: hostnet.TapQEMU}); err != nil {
		t.Fatal(err)
	}
	fd, err := openAsQEMU(t, topo.HostNS, tapName, false)
	if err != nil {
		t.Fatalf("open the tap as QEMU: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	// Non-blocking, as QEMU writes: the tap then builds the frame in a
	// page and runs a native program on it before any skb exists.
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	conn, err := traffic.ListenUDP(topo.WireNS, topo.WireIP, 7010)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	const n = 20
	src := topo.WireIP.To4()
	src = net.IPv4(src[0], src[1], src[2], 77)
	marker := []byte(fmt.Sprintf("csum-%d", time.Now().UnixNano()))
	for i := range n {
		f := partialCsumUDP(mac1, topo.WireMAC, src, topo.WireIP, 7010, append(append([]byte{}, marker...), fmt.Sprintf(" %d", i)...))
		if _, err := unix.Write(fd, f); err != nil {
			t.Fatalf("write frame %d into the tap: %v", i, err)
		}
	}
	got := 0
	buf := make([]byte, 2048)
	for deadline := time.Now().Add(3 * time.Second); got < n && time.Now().Before(deadline); {
		conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		m, err := conn.Read(buf)
		if err == nil && bytes.HasPrefix(buf[:m], marker) {
			got++
		}
	}
	if got != n {
		t.Errorf("the wire side's socket got %d of %d datagrams the guest sent with checksum offload", got, n)
	}
}
