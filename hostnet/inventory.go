package hostnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// XDPFeatures are what a device's driver says it can do with XDP, as the
// kernel's "netdev" generic netlink family reports them (Linux 6.3+).
type XDPFeatures struct {
	Basic       bool `json:"basic"`        // XDP_PASS/DROP/TX/ABORTED in native mode
	Redirect    bool `json:"redirect"`     // XDP_REDIRECT from native mode
	NDOXmit     bool `json:"ndo_xmit"`     // can be the target of a redirect
	XSKZeroCopy bool `json:"xsk_zerocopy"` // AF_XDP zero-copy
	HWOffload   bool `json:"hw_offload"`
	RxSG        bool `json:"rx_sg"` // multi-buffer receive
	NDOXmitSG   bool `json:"ndo_xmit_sg"`
	// ZCMaxSegs is the most fragments a zero-copy AF_XDP frame may have.
	ZCMaxSegs uint32 `json:"zc_max_segs,omitempty"`
	Mask      uint64 `json:"mask"`
	// Source says where this came from: "netdev-netlink", or
	// "unavailable: why" (then the flags above are all false: unknown).
	Source string `json:"source"`
}

// Generic netlink "netdev" family (include/uapi/linux/netdev.h).
const (
	netdevCmdDevGet         = 1
	netdevADevIfindex       = 1
	netdevADevXDPFeatures   = 3
	netdevADevXDPZCMaxSegs  = 4
	netdevXDPActBasic       = 1 << 0
	netdevXDPActRedirect    = 1 << 1
	netdevXDPActNDOXmit     = 1 << 2
	netdevXDPActXSKZeroCopy = 1 << 3
	netdevXDPActHWOffload   = 1 << 4
	netdevXDPActRxSG        = 1 << 5
	netdevXDPActNDOXmitSG   = 1 << 6
	netdevFamilyName        = "netdev"
	netdevFamilyVersion     = 1
)

func xdpFeaturesFromMask(mask uint64) XDPFeatures {
	return XDPFeatures{
		Basic:       mask&netdevXDPActBasic != 0,
		Redirect:    mask&netdevXDPActRedirect != 0,
		NDOXmit:     mask&netdevXDPActNDOXmit != 0,
		XSKZeroCopy: mask&netdevXDPActXSKZeroCopy != 0,
		HWOffload:   mask&netdevXDPActHWOffload != 0,
		RxSG:        mask&netdevXDPActRxSG != 0,
		NDOXmitSG:   mask&netdevXDPActNDOXmitSG != 0,
		Mask:        mask,
		Source:      "netdev-netlink",
	}
}

// String lists the features, e.g. "basic,redirect,ndo_xmit".
func (f XDPFeatures) String() string {
	if !strings.HasPrefix(f.Source, "netdev") {
		return f.Source
	}
	var names []string
	for _, x := range []struct {
		on   bool
		name string
	}{{f.Basic, "basic"}, {f.Redirect, "redirect"}, {f.NDOXmit, "ndo_xmit"}, {f.XSKZeroCopy, "xsk_zerocopy"},
		{f.HWOffload, "hw_offload"}, {f.RxSG, "rx_sg"}, {f.NDOXmitSG, "ndo_xmit_sg"}} {
		if x.on {
			names = append(names, x.name)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ",")
}

// Uplink is what the host knows about a network interface a dataplane may
// take over.
type Uplink struct {
	Name     string           `json:"name"`
	Index    int              `json:"ifindex"`
	MAC      net.HardwareAddr `json:"mac"`
	RxQueues int              `json:"rx_queues"`
	TxQueues int              `json:"tx_queues"`
	XDP      XDPFeatures      `json:"xdp_features"`
	// AttachedProgID is the XDP program already attached, 0 if none.
	AttachedProgID uint32 `json:"attached_prog_id,omitempty"`
}

// Inspect reads an interface's queues and XDP features in the namespace r
// runs in (nil: the caller's).
func Inspect(r *NSRunner, name string) (*Uplink, error) {
	var up *Uplink
	err := r.Do(func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				return fmt.Errorf("%q: %w in %s (list them with 'ip link')", name, ErrNoSuchInterface, nsName(r.Path()))
			}
			return fmt.Errorf("look up %q: %w", name, err)
		}
		a := l.Attrs()
		up = &Uplink{Name: a.Name, Index: a.Index, MAC: a.HardwareAddr, RxQueues: a.NumRxQueues, TxQueues: a.NumTxQueues}
		if a.Xdp != nil && a.Xdp.Attached {
			up.AttachedProgID = a.Xdp.ProgId
		}
		up.XDP = readXDPFeatures(a.Index)
		return nil
	})
	return up, err
}

// readXDPFeatures asks the netdev family; it must run in the device's
// namespace. Kernels without the family give "unavailable".
func readXDPFeatures(ifindex int) XDPFeatures {
	fam, err := netlink.GenlFamilyGet(netdevFamilyName)
	if err != nil {
		return XDPFeatures{Source: fmt.Sprintf("unavailable: no %q generic netlink family (Linux 6.3+): %v", netdevFamilyName, err)}
	}
	req := nl.NewNetlinkRequest(int(fam.ID), unix.NLM_F_REQUEST)
	req.AddData(genlHeader{cmd: netdevCmdDevGet, version: netdevFamilyVersion})
	req.AddData(nl.NewRtAttr(netdevADevIfindex, nl.Uint32Attr(uint32(ifindex))))
	msgs, err := req.Execute(unix.NETLINK_GENERIC, 0)
	if err != nil {
		return XDPFeatures{Source: fmt.Sprintf("unavailable: netdev dev-get: %v", err)}
	}
	for _, m := range msgs {
		if len(m) < nl.SizeofGenlmsg {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[nl.SizeofGenlmsg:])
		if err != nil {
			return XDPFeatures{Source: fmt.Sprintf("unavailable: parse netdev reply: %v", err)}
		}
		var f *XDPFeatures
		var zc, idx uint32
		for _, a := range attrs {
			switch a.Attr.Type {
			case netdevADevIfindex:
				if len(a.Value) >= 4 {
					idx = binary.NativeEndian.Uint32(a.Value)
				}
			case netdevADevXDPFeatures:
				if len(a.Value) >= 8 {
					x := xdpFeaturesFromMask(binary.NativeEndian.Uint64(a.Value))
					f = &x
				}
			case netdevADevXDPZCMaxSegs:
				if len(a.Value) >= 4 {
					zc = binary.NativeEndian.Uint32(a.Value)
				}
			}
		}
		if f != nil && idx == uint32(ifindex) {
			f.ZCMaxSegs = zc
			return *f
		}
	}
	return XDPFeatures{Source: "unavailable: the netdev family did not report XDP features"}
}

// genlHeader is struct genlmsghdr with its reserved field zeroed. (nl.Genlmsg
// of vishvananda/netlink v1.3.1 serializes 4 bytes from a 2-byte struct, so
// the reserved field carries whatever follows it in memory, and families
// with strict validation, such as netdev, refuse the request with EINVAL.)
type genlHeader struct{ cmd, version uint8 }

func (h genlHeader) Len() int          { return nl.SizeofGenlmsg }
func (h genlHeader) Serialize() []byte { return []byte{h.cmd, h.version, 0, 0} }
