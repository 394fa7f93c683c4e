package hostnet

import (
	"errors"
	"fmt"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ethtool RX network flow classification (include/uapi/linux/ethtool.h).
const (
	ethtoolSRXCLSRLDEL = 0x31
	ethtoolSRXCLSRLINS = 0x32
	etherFlow          = 0x12
	rxClsLocAny        = 0xffffffff
)

// ethtoolRxFlowSpec is struct ethtool_rx_flow_spec.
type ethtoolRxFlowSpec struct {
	FlowType   uint32
	HU         [52]byte // union ethtool_flow_union: struct ethhdr for ETHER_FLOW
	HExt       [20]byte // struct ethtool_flow_ext
	MU         [52]byte // masks: a 1 bit is a bit to match
	MExt       [20]byte
	_          [4]byte
	RingCookie uint64 // the RX queue
	Location   uint32
	_          [4]byte
}

// ethtoolRxnfc is struct ethtool_rxnfc without the rule_locs tail.
type ethtoolRxnfc struct {
	Cmd      uint32
	FlowType uint32
	Data     uint64
	FS       ethtoolRxFlowSpec
	RuleCnt  uint32
	_        [4]byte
}

// macRule builds the SRXCLSRLINS request steering frames whose destination
// MAC is mac to RX queue.
func macRule(mac net.HardwareAddr, queue int) ethtoolRxnfc {
	r := ethtoolRxnfc{Cmd: ethtoolSRXCLSRLINS, FlowType: etherFlow}
	r.FS.FlowType = etherFlow
	copy(r.FS.HU[0:6], mac) // ethhdr.h_dest
	for i := 0; i < 6; i++ {
		r.FS.MU[i] = 0xff
	}
	r.FS.RingCookie = uint64(queue)
	r.FS.Location = rxClsLocAny
	return r
}

func ethtoolIoctl(ifname string, data unsafe.Pointer) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("ethtool socket: %w", err)
	}
	defer unix.Close(fd)
	var ifr ifreqData
	if len(ifname) >= len(ifr.Name) {
		return fmt.Errorf("%w: interface name %q too long", ErrInvalid, ifname)
	}
	copy(ifr.Name[:], ifname)
	ifr.Data = data
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return errno
	}
	return nil
}

// SteerMAC asks the NIC to put frames for mac on RX queue (an ntuple rule,
// like `ethtool -N IF flow-type ether dst MAC action QUEUE`) and returns the
// rule's location. It must run in the interface's namespace. A NIC without
// ntuple steering (veth among them) gives an error wrapping ErrNotSupported.
func SteerMAC(ifname string, mac net.HardwareAddr, queue int) (uint32, error) {
	r := macRule(mac, queue)
	// Drivers that cannot choose a rule slot themselves (ixgbe, i40e, ...)
	// refuse RX_CLS_LOC_ANY: give them a free slot.
	if info, err := Ntuple(nil, ifname); err == nil && !info.AnyLocation {
		loc, ok := info.FreeLocation()
		if !ok {
			return 0, fmt.Errorf("%w: uplink %s: the ntuple rule table is full (%d rules)", ErrNotSupported, ifname, info.TableSize)
		}
		r.FS.Location = loc
	}
	if err := ethtoolIoctl(ifname, unsafe.Pointer(&r)); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EINVAL) {
			return 0, fmt.Errorf("%w: uplink %s has no ntuple flow steering (ETHTOOL_SRXCLSRLINS: %v): traffic for %s reaches queue %d only if something else steers it there",
				ErrNotSupported, ifname, err, mac, queue)
		}
		return 0, fmt.Errorf("steer %s to queue %d on %s: %w", mac, queue, ifname, err)
	}
	return r.FS.Location, nil
}

// UnsteerMAC deletes a rule SteerMAC installed.
func UnsteerMAC(ifname string, loc uint32) error {
	r := ethtoolRxnfc{Cmd: ethtoolSRXCLSRLDEL}
	r.FS.Location = loc
	if err := ethtoolIoctl(ifname, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("delete steering rule %d on %s: %w", loc, ifname, err)
	}
	return nil
}
