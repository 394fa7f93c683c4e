package traffic

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// attachCounter attaches a QueueCounter to the pair's uplink, detached when
// the test ends.
func attachCounter(t *testing.T, p *vethPair) *QueueCounter {
	t.Helper()
	qc, err := AttachQueueCounter(p.HostNS, p.Uplink)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qc.Close() })
	return qc
}

// waitCounts polls qc until its marked counts on queues 0..len(want)-1
// equal want (at most 5 s), then checks they stay so for 100 ms, and fails
// the test with the counts otherwise. It returns the counts.
func waitCounts(t *testing.T, qc *QueueCounter, want []uint64) QueueCounts {
	t.Helper()
	equal := func(c QueueCounts) bool {
		for q := range c.Marked {
			w := uint64(0)
			if q < len(want) {
				w = want[q]
			}
			if c.Marked[q] != w {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(5 * time.Second)
	var c QueueCounts
	var err error
	for {
		if c, err = qc.Counts(); err != nil {
			t.Fatal(err)
		}
		if equal(c) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	if c, err = qc.Counts(); err != nil {
		t.Fatal(err)
	}
	if !equal(c) {
		t.Fatalf("marked frames per RX queue %v, want %v", c.Marked[:len(want)], want)
	}
	return c
}

func TestSenderAimsAtQueues(t *testing.T) {
	p := newVethPair(t, 4)
	qc := attachCounter(t, p)
	s, err := NewSender(p.WireNS, p.Wire)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Distinct counts per queue, more than the rings hold, out of order.
	want := []uint64{3000, 500, 0, 5001}
	for _, q := range []int{3, 0, 1} {
		spec := FrameSpec{Dst: p.UplinkMAC, Src: p.WireMAC, Size: 64 + q, Tag: uint16(q)}
		if err := s.Send(spec, q, 0, int(want[q])); err != nil {
			t.Fatal(err)
		}
	}
	c := waitCounts(t, qc, want)
	t.Logf("marked per queue %v, other frames %v", c.Marked[:4], c.Other[:4])

	// A queue the veth does not have.
	if err := s.Send(FrameSpec{}, 4, 0, 1); err == nil {
		t.Error("send on queue 4 of a 4-queue veth succeeded")
	}
}

func TestSendToQueue(t *testing.T) {
	p := newVethPair(t, 4)
	qc := attachCounter(t, p)
	want := []uint64{7, 11, 13, 17}
	for q, n := range want {
		frames := make([][]byte, n)
		for i := range frames {
			frames[i] = make([]byte, 100)
			spec := FrameSpec{Dst: p.UplinkMAC, Src: p.WireMAC, Size: 100, Tag: uint16(q)}
			if _, err := spec.Build(frames[i], uint32(i)); err != nil {
				t.Fatal(err)
			}
		}
		if err := SendToQueue(p.WireNS, p.Wire, q, frames); err != nil {
			t.Fatal(err)
		}
	}
	waitCounts(t, qc, want)
	if err := SendToQueue(p.WireNS, p.Wire, 0, [][]byte{make([]byte, 10)}); err == nil {
		t.Error("sending a 10-byte frame succeeded")
	}
}

// TestQueueAimingAlternatives records (in the log) where frames sent by the
// other candidate mechanisms land, the evidence behind Sender's choice of
// AF_XDP. It asserts only that every frame arrives.
func TestQueueAimingAlternatives(t *testing.T) {
	p := newVethPair(t, 4)
	qc := attachCounter(t, p)
	buf := make([]byte, 64)
	var last QueueCounts
	const n = 100
	delta := func(what string) {
		t.Helper()
		var d [4]uint64
		deadline := time.Now().Add(5 * time.Second)
		for {
			c, err := qc.Counts()
			if err != nil {
				t.Fatal(err)
			}
			sum := uint64(0)
			for i := range d {
				d[i] = c.Marked[i] - last.Marked[i]
				sum += d[i]
			}
			if sum == n {
				last = c
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d of %d frames arrived", what, sum, n)
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Logf("%s: RX queues %v", what, d)
	}
	for flow := 0; flow < 4; flow++ {
		spec := FrameSpec{Dst: p.UplinkMAC, Src: p.WireMAC, Tag: 1, SrcPort: uint16(1000 + flow),
			SrcIP: netip.MustParseAddr("10.0.0.1"), DstIP: netip.MustParseAddr("10.0.0.2")}
		l, _ := spec.Build(buf, 0)
		packetSend(t, p.WireNS, p.Wire, buf[:l], n, false)
		delta(fmt.Sprintf("AF_PACKET, flow %d", flow))
		packetSend(t, p.WireNS, p.Wire, buf[:l], n, true)
		delta(fmt.Sprintf("AF_PACKET with PACKET_QDISC_BYPASS, flow %d", flow))
	}
	var objs trafficObjects
	if err := loadTrafficObjects(&objs, nil); err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	var tcx link.Link
	err := inNS(p.WireNS, func() error {
		ifi, err := net.InterfaceByName(p.Wire)
		if err != nil {
			return err
		}
		tcx, err = link.AttachTCX(link.TCXOptions{Interface: ifi.Index, Program: objs.XhSetTxq, Attach: ebpf.AttachTCXEgress})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tcx.Close()
	l, _ := FrameSpec{Dst: p.UplinkMAC, Src: p.WireMAC, Tag: 1}.Build(buf, 0)
	for v := uint32(0); v <= 5; v++ {
		if err := objs.TxqSet.Put(uint32(0), v); err != nil {
			t.Fatal(err)
		}
		packetSend(t, p.WireNS, p.Wire, buf[:l], n, false)
		delta(fmt.Sprintf("AF_PACKET, tcx egress sets queue_mapping=%d", v))
	}
}

// packetSend sends frame n times with AF_PACKET out of ifname.
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
