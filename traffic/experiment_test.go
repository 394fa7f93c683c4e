package traffic

import (
	"fmt"
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestExperimentAFXDP(t *testing.T) {
	p := newVethPair(t, 4)
	qc, err := AttachQueueCounter(p.HostNS, p.Uplink)
	if err != nil {
		t.Fatal(err)
	}
	defer qc.Close()
	s, err := NewSender(p.WireNS, p.Wire)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	spec := FrameSpec{Dst: p.UplinkMAC, Src: p.WireMAC, Size: 64, Tag: 1}
	for q := 0; q < 4; q++ {
		if err := s.Send(spec, q, 0, 1000*(q+1)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	c, err := qc.Counts()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("marked %v other %v", c.Marked[:4], c.Other[:4])
}

func packetSend(t *testing.T, nsPath, ifname string, frame []byte, n int, bypass bool) {
	t.Helper()
	err := inNS(nsPath, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if bypass {
			if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
				return err
			}
		}
		sa := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Protocol: htons(unix.ETH_P_IP)}
		for i := 0; i < n; i++ {
			if err := unix.Sendto(fd, frame, 0, sa); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestExperimentOthers(t *testing.T) {
	p := newVethPair(t, 4)
	qc, err := AttachQueueCounter(p.HostNS, p.Uplink)
	if err != nil {
		t.Fatal(err)
	}
	defer qc.Close()
	buf := make([]byte, 64)
	var last QueueCounts
	delta := func(what string) {
		time.Sleep(100 * time.Millisecond)
		c, err := qc.Counts()
		if err != nil {
			t.Fatal(err)
		}
		var d [4]uint64
		for i := range d {
			d[i] = c.Marked[i] - last.Marked[i]
		}
		last = c
		t.Logf("%s: %v", what, d)
	}
	for flow := 0; flow < 4; flow++ {
		spec := FrameSpec{Dst: p.UplinkMAC, Src: p.WireMAC, Size: 64, Tag: 1, SrcPort: uint16(1000 + flow), SrcIP: netip.MustParseAddr("10.0.0.1"), DstIP: netip.MustParseAddr("10.0.0.2")}
		n, _ := spec.Build(buf, 0)
		packetSend(t, p.WireNS, p.Wire, buf[:n], 100, false)
		delta(fmt.Sprintf("packet qdisc flow %d", flow))
		packetSend(t, p.WireNS, p.Wire, buf[:n], 100, true)
		delta(fmt.Sprintf("packet bypass flow %d", flow))
	}
	// tc egress setting queue_mapping.
	var objs TrafficObjects
	if err := LoadTrafficObjects(&objs, nil); err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	var l link.Link
	err = inNS(p.WireNS, func() error {
		ifi, err := net.InterfaceByName(p.Wire)
		if err != nil {
			return err
		}
		l, err = link.AttachTCX(link.TCXOptions{Interface: ifi.Index, Program: objs.XhSetTxq, Attach: ebpf.AttachTCXEgress})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	spec := FrameSpec{Dst: p.UplinkMAC, Src: p.WireMAC, Size: 64, Tag: 1}
	n, _ := spec.Build(buf, 0)
	for v := uint32(0); v < 5; v++ {
		if err := objs.TxqSet.Put(uint32(0), v); err != nil {
			t.Fatal(err)
		}
		packetSend(t, p.WireNS, p.Wire, buf[:n], 100, false)
		delta(fmt.Sprintf("tcx queue_mapping=%d packet qdisc", v))
		packetSend(t, p.WireNS, p.Wire, buf[:n], 100, true)
		delta(fmt.Sprintf("tcx queue_mapping=%d packet bypass", v))
	}
}
