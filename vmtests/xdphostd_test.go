package vmtests

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/guestprog"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/nsrun"
	"github.com/xdp-hostd/xdp-hostd/traffic"
	"github.com/xdp-hostd/xdp-hostd/vmport"
	"github.com/xdp-hostd/xdp-hostd/vmtests/vmproto"
)

// A real guest whose NIC is xdp-hostd's vhost-user device, behind a
// one-queue uplink dedicated to it (so that broadcasts such as ARP reach it
// too): ARP and ping from the wire-side namespace, ping from the guest, and
// counted UDP bursts both ways across the uplink.
func TestGuestThroughXDPHostd(t *testing.T) {
	SkipWithoutQEMU(t)
	testnet.RequireRoot(t)
	const (
		guestMAC = "52:54:00:00:aa:01"
		guestIP  = "10.201.0.50"
		n        = 300
	)
	topo := testnet.Topology(t, 1)
	dp, err := hostnet.Open(hostnet.Config{Uplink: topo.Uplink, NetNS: topo.HostNS})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	mac, _ := net.ParseMAC(guestMAC)
	vm, err := dp.AddVM(hostnet.VMSpec{Name: "guest", MAC: mac, Queues: []int{0}, Delivery: guestprog.DeliverXSK})
	if err != nil {
		t.Fatal(err)
	}
	sock := TempSocketPath(t, "xh.sock")
	port, err := vmport.Open(vmport.Config{VM: vm, Socket: sock, NetNS: topo.HostNS})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { port.Close() })

	g := StartT(t, WithName("guest"), WithVhostUserNIC(VhostUserNIC{Socket: sock, MAC: guestMAC, Queues: 1}))
	cfg, err := Call[vmproto.ConfigureResult](g, vmproto.Configure{MAC: guestMAC, Addr: guestIP + "/24"})
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Carrier {
		t.Fatalf("guest NIC has no carrier: %+v", cfg)
	}

	// Wire side -> guest: ARP (broadcast) and ICMP echo.
	rtt, err := pingFrom(topo.WireNS, net.ParseIP(guestIP), 10*time.Second)
	if err != nil {
		t.Fatalf("ping from the wire side: %v\nport %+v", err, port.Stats())
	}
	t.Logf("wire -> guest ping: %v", rtt)

	// Guest -> wire side: the guest resolves the wire's address and pings it.
	pr, err := Call[vmproto.PingResult](g, vmproto.Ping{Addr: topo.WireIP.String(), Count: 3, Timeout: 5 * time.Second})
	if err != nil || pr.Received == 0 {
		t.Fatalf("ping from the guest: %+v %v", pr, err)
	}

	// Counted burst, wire -> guest, aimed at the VM's queue.
	if _, err := g.Do(vmproto.UDPListen{Port: 40000}); err != nil {
		t.Fatal(err)
	}
	wireIP, _ := netip.AddrFromSlice(topo.WireIP)
	gIP := netip.MustParseAddr(guestIP)
	spec := traffic.FrameSpec{Dst: mac, Src: topo.WireMAC, SrcIP: wireIP, DstIP: gIP, SrcPort: 7002, DstPort: 40000, Size: 120, Tag: 1}
	// The guest agent counts datagrams whose payload reads "MARKER SEQ ".
	inMarker := fmt.Sprintf("wire-%d", os.Getpid())
	frames := make([][]byte, n)
	for i := range frames {
		frames[i] = make([]byte, spec.Size)
		if _, err := spec.Build(frames[i], uint32(i)); err != nil {
			t.Fatal(err)
		}
		p := frames[i][traffic.HeaderLen:]
		copy(p, fmt.Sprintf("%s %d ", inMarker, i))
	}
	s := testnet.Sender(t, topo)
	for sent := 0; sent < n; sent += 50 {
		if err := s.SendFrames(0, frames[sent:sent+50]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	got, err := Call[vmproto.UDPCountResult](g, vmproto.UDPCount{Port: 40000, Marker: inMarker, Want: n, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if got.Matched != n || got.Seqs != n {
		t.Errorf("the guest got %d of %d datagrams: %+v (port %+v)", got.Matched, n, got, port.Stats())
	}

	// Counted burst, guest -> wire side.
	conn, err := traffic.ListenUDP(topo.WireNS, topo.WireIP, 7003)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	marker := fmt.Sprintf("vmtest-%d", os.Getpid())
	sent, err := Call[vmproto.UDPSendResult](g, vmproto.UDPSend{Dst: fmt.Sprintf("%s:7003", topo.WireIP), Count: n, Size: 100, Marker: marker, Interval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if arrived := countDatagrams(conn, []byte(marker), n, 10*time.Second); arrived != sent.Sent || sent.Sent != n {
		t.Errorf("the wire side got %d of %d datagrams the guest sent", arrived, sent.Sent)
	}
	v, _ := vm.Verdicts()
	t.Logf("port %+v; VM verdicts %+v", port.Stats(), v)
	if st := port.Stats(); st.TXSpoofed != 0 {
		t.Errorf("the guest's own frames were counted as spoofed: %+v", st)
	}
}

// countDatagrams reads datagrams starting with marker until want arrived or
// the timeout passed.
func countDatagrams(c *net.UDPConn, marker []byte, want int, timeout time.Duration) int {
	buf := make([]byte, 2048)
	got := 0
	deadline := time.Now().Add(timeout)
	for got < want && time.Now().Before(deadline) {
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := c.Read(buf)
		if err != nil {
			continue
		}
		if bytes.HasPrefix(buf[:n], marker) {
			got++
		}
	}
	return got
}

// pingFrom sends ICMP echo requests from the namespace at ns to dst until
// one is answered or the timeout passes (the first may wait for ARP).
func pingFrom(ns string, dst net.IP, timeout time.Duration) (time.Duration, error) {
	var fd int
	err := nsrun.Do(ns, func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("raw ICMP socket: %w", err)
	}
	defer unix.Close(fd)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 200000})
	var to unix.SockaddrInet4
	copy(to.Addr[:], dst.To4())
	req := make([]byte, 16)
	req[0] = 8 // echo request
	binary.BigEndian.PutUint16(req[4:], uint16(os.Getpid()))
	buf := make([]byte, 1500)
	for seq, deadline := uint16(1), time.Now().Add(timeout); time.Now().Before(deadline); seq++ {
		binary.BigEndian.PutUint16(req[6:], seq)
		binary.BigEndian.PutUint16(req[2:], 0)
		binary.BigEndian.PutUint16(req[2:], icmpChecksum(req))
		start := time.Now()
		if err := unix.Sendto(fd, req, 0, &to); err != nil {
			return 0, fmt.Errorf("send echo request: %w", err)
		}
		for time.Since(start) < 500*time.Millisecond {
			n, from, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				if errors.Is(err, unix.EAGAIN) {
					continue
				}
				return 0, err
			}
			f, ok := from.(*unix.SockaddrInet4)
			ihl := int(buf[0]&0xf) * 4
			if ok && net.IP(f.Addr[:]).Equal(dst) && n >= ihl+8 && buf[ihl] == 0 && binary.BigEndian.Uint16(buf[ihl+6:]) == seq {
				return time.Since(start), nil
			}
		}
	}
	return 0, fmt.Errorf("no echo reply from %s within %v", dst, timeout)
}

func icmpChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
