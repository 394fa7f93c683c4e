package hostnet

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Topology is a self-contained stand-in for a host with a NIC: two network
// namespaces joined by a multi-queue veth pair. The "host" namespace holds
// the uplink (the NIC xdp-hostd attaches to, and the VMs' taps); the "wire"
// namespace holds its peer, where traffic for the VMs comes from. The demo,
// the benchmarks and the tests use it; it never touches the caller's own
// interfaces.
//
// On a veth, the uplink's RX queue of a packet is the wire side's TX queue.
type Topology struct {
	Prefix string // unique prefix of every name below
	HostNS string // path of the host namespace
	WireNS string // path of the wire namespace
	Uplink string // uplink interface, in HostNS
	Wire   string // its peer, in WireNS
	Queues int

	UplinkMAC, WireMAC net.HardwareAddr
	UplinkIP, WireIP   net.IP // a /24 between the two, for host-stack traffic

	names []string // namespaces to delete
}

// TopologyOptions configure NewTopology; zero values are defaults.
type TopologyOptions struct {
	// Prefix makes the names unique (at most 8 characters); default
	// "xh" + the process ID.
	Prefix string
	// Queues is the number of RX/TX queues of the veth; default 4.
	Queues int
}

// NewTopology creates the namespaces and the veth pair. On error nothing is
// left behind.
func NewTopology(opts TopologyOptions) (_ *Topology, err error) {
	if opts.Prefix == "" {
		opts.Prefix = fmt.Sprintf("xh%d", os.Getpid()%1000000)
	}
	if len(opts.Prefix) > 8 {
		return nil, fmt.Errorf("topology prefix %q: at most 8 characters", opts.Prefix)
	}
	if opts.Queues == 0 {
		opts.Queues = 4
	}
	t := &Topology{
		Prefix:    opts.Prefix,
		Uplink:    opts.Prefix + "up",
		Wire:      opts.Prefix + "wi",
		Queues:    opts.Queues,
		UplinkMAC: net.HardwareAddr{0x02, 0x58, 0x48, 0x00, 0x00, 0x01},
		WireMAC:   net.HardwareAddr{0x02, 0x58, 0x48, 0x00, 0x00, 0x02},
		UplinkIP:  net.IPv4(10, 201, 0, 1).To4(),
		WireIP:    net.IPv4(10, 201, 0, 2).To4(),
	}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	if t.HostNS, err = t.newNS(opts.Prefix + "-host"); err != nil {
		return nil, err
	}
	if t.WireNS, err = t.newNS(opts.Prefix + "-wire"); err != nil {
		return nil, err
	}
	host, err := NewNSRunner(t.HostNS)
	if err != nil {
		return nil, err
	}
	defer host.Close()
	wire, err := NewNSRunner(t.WireNS)
	if err != nil {
		return nil, err
	}
	defer wire.Close()

	// No IPv6 in either namespace: its neighbour discovery would add frames
	// the demo and the tests did not send.
	for _, r := range []*NSRunner{host, wire} {
		if err := r.Do(disableIPv6); err != nil {
			return nil, err
		}
	}
	err = host.Do(func() error {
		la := netlink.NewLinkAttrs()
		la.Name = t.Uplink
		la.NumTxQueues, la.NumRxQueues = t.Queues, t.Queues
		la.HardwareAddr = t.UplinkMAC
		veth := &netlink.Veth{LinkAttrs: la, PeerName: t.Wire, PeerHardwareAddr: t.WireMAC,
			PeerNamespace: netlink.NsFd(int(wire.Handle()))}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("create veth %s/%s: %w", t.Uplink, t.Wire, err)
		}
		return upWithAddr(t.Uplink, t.UplinkIP)
	})
	if err != nil {
		return nil, err
	}
	if err := wire.Do(func() error { return upWithAddr(t.Wire, t.WireIP) }); err != nil {
		return nil, err
	}
	// Frames the uplink sends with XDP (redirect, XDP_TX) reach the wire
	// side only if it runs XDP itself: a veth delivers XDP frames through
	// NAPI queues that exist only then, and flushes XDP_TX bulks only into
	// a peer that has a program. A program that passes everything makes the
	// wire side behave like an ordinary receiving NIC.
	if err := wire.Do(func() error { return attachPass(t.Wire) }); err != nil {
		return nil, err
	}
	return t, nil
}

// attachPass attaches an XDP program that passes every frame to ifname
// through netlink: the device holds it, and it goes with the device.
func attachPass(ifname string) error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "xh_wire_pass", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("load pass program for %s: %w", ifname, err)
	}
	defer prog.Close()
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetXdpFdWithFlags(l, prog.FD(), xdpFlagsDrv); err != nil {
		return fmt.Errorf("attach pass program to %s: %w", ifname, err)
	}
	return nil
}

func disableIPv6() error {
	for _, c := range []string{"all", "default"} {
		p := "/proc/sys/net/ipv6/conf/" + c + "/disable_ipv6"
		if err := os.WriteFile(p, []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("disable IPv6: %w", err)
		}
	}
	return nil
}

func upWithAddr(name string, ip net.IP) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(24, 32)}}
	if err := netlink.AddrAdd(l, addr); err != nil {
		return fmt.Errorf("address %s on %s: %w", ip, name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring %s up: %w", name, err)
	}
	if lo, err := netlink.LinkByName("lo"); err == nil {
		_ = netlink.LinkSetUp(lo)
	}
	return nil
}

// newNS creates a named namespace (/run/netns/NAME) without moving the
// calling thread for longer than the call.
func (t *Topology) newNS(name string) (string, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return "", fmt.Errorf("get current network namespace: %w", err)
	}
	defer orig.Close()
	h, err := netns.NewNamed(name)
	if err != nil {
		return "", fmt.Errorf("create network namespace %s: %w", name, err)
	}
	h.Close()
	t.names = append(t.names, name)
	if err := netns.Set(orig); err != nil {
		// The thread stays locked and is discarded with its goroutine.
		runtime.LockOSThread()
		return "", fmt.Errorf("return from network namespace %s: %w", name, err)
	}
	return filepath.Join("/run/netns", name), nil
}

// Close deletes the namespaces and with them every device in them. It may be
// called more than once.
func (t *Topology) Close() error {
	var errs []error
	for _, name := range t.names {
		if err := netns.DeleteNamed(name); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("delete network namespace %s: %w", name, err))
		}
	}
	t.names = nil
	return errors.Join(errs...)
}

// SetGRO turns GRO on or off for ifname in the namespace r runs in. On a
// veth, GRO gives the device NAPI receive queues, which is what lets XDP
// programs elsewhere redirect or XDP_TX frames into it without an XDP
// program of its own.
func SetGRO(r *NSRunner, ifname string, on bool) error {
	return r.Do(func() error {
		// The veth acts on a change only: to turn GRO on, turn it off first.
		settings := []uint32{0}
		if on {
			settings = []uint32{0, 1}
		}
		for _, v := range settings {
			val := ethtoolValue{Cmd: ethtoolSGRO, Data: v}
			if err := ethtoolIoctl(ifname, unsafe.Pointer(&val)); err != nil {
				return fmt.Errorf("set GRO on %s: %w", ifname, err)
			}
		}
		return nil
	})
}

const ethtoolSGRO = 0x0000002c // ETHTOOL_SGRO

// ifreqData is struct ifreq with ifr_data, the layout SIOCETHTOOL takes.
type ifreqData struct {
	Name [unix.IFNAMSIZ]byte
	Data unsafe.Pointer
	_    [16]byte
}

type ethtoolValue struct {
	Cmd  uint32
	Data uint32
}

// AddPortPair adds a veth pair for use as an extra port of a VM's port
// table: name in the host namespace, name+"w" in the wire namespace with an
// XDP pass program, so that frames redirected into name arrive there. It
// returns the two names.
func (t *Topology) AddPortPair(name string) (host, wire string, err error) {
	hostNS, err := NewNSRunner(t.HostNS)
	if err != nil {
		return "", "", err
	}
	defer hostNS.Close()
	wireNS, err := NewNSRunner(t.WireNS)
	if err != nil {
		return "", "", err
	}
	defer wireNS.Close()
	wire = name + "w"
	err = hostNS.Do(func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: wire,
			PeerNamespace: netlink.NsFd(int(wireNS.Handle()))}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("create veth %s/%s: %w", name, wire, err)
		}
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		return "", "", err
	}
	err = wireNS.Do(func() error {
		l, err := netlink.LinkByName(wire)
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		return "", "", err
	}
	if err := wireNS.Do(func() error { return attachPass(wire) }); err != nil {
		return "", "", err
	}
	return name, wire, nil
}
