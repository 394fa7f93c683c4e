package hostnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf/link"
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
	RxQueues int              `json:"rx_queues"` // IFLA_NUM_RX_QUEUES
	TxQueues int              `json:"tx_queues"` // IFLA_NUM_TX_QUEUES
	XDP      XDPFeatures      `json:"xdp_features"`
	// Attached is the XDP program that was attached when the uplink was
	// inspected.
	Attached AttachedXDP `json:"attached_xdp"`
}

// XDPMode is how an XDP program is attached to a device.
type XDPMode string

// The modes IFLA_XDP_ATTACHED reports.
const (
	XDPModeNone    XDPMode = ""        // no program
	XDPModeDriver  XDPMode = "driver"  // native, in the driver (XDP_ATTACHED_DRV)
	XDPModeGeneric XDPMode = "generic" // skb mode (XDP_ATTACHED_SKB)
	XDPModeOffload XDPMode = "offload" // on the NIC (XDP_ATTACHED_HW)
	// XDPModeMulti: programs in several modes at once (XDP_ATTACHED_MULTI);
	// ProgID is then 0, as the netlink library reports no single program.
	XDPModeMulti XDPMode = "multi"
)

func xdpModeFromAttached(v uint32) XDPMode {
	switch v {
	case 0:
		return XDPModeNone
	case nl.XDP_ATTACHED_DRV:
		return XDPModeDriver
	case nl.XDP_ATTACHED_SKB:
		return XDPModeGeneric
	case nl.XDP_ATTACHED_HW:
		return XDPModeOffload
	case 4: // XDP_ATTACHED_MULTI
		return XDPModeMulti
	}
	return XDPMode(fmt.Sprintf("unknown(%d)", v))
}

// AttachedXDP describes an XDP program already attached to a device.
type AttachedXDP struct {
	Mode   XDPMode `json:"mode,omitempty"`    // XDPModeNone if nothing is attached
	ProgID uint32  `json:"prog_id,omitempty"` // the program's ID (bpftool prog show id N)
	// LinkID is the bpf_link that holds the program (its owner must close
	// it: netlink cannot detach it), 0 if the program was attached through
	// netlink (ip link set dev X xdp ...) or if LinkErr is set.
	LinkID uint32 `json:"link_id,omitempty"`
	// LinkErr says why the bpf_links could not be searched ("" if they
	// were).
	LinkErr string `json:"link_err,omitempty"`
}

// Present reports whether a program is attached.
func (a AttachedXDP) Present() bool { return a.Mode != XDPModeNone }

// RemoveHint tells an operator how to remove the program from ifname, ""
// if nothing is attached.
func (a AttachedXDP) RemoveHint(ifname string) string {
	switch {
	case !a.Present():
		return ""
	case a.LinkID != 0:
		return fmt.Sprintf("XDP program id %d is held by bpf_link id %d: stop the process that owns it, or remove its pin (bpftool link show id %d shows it)", a.ProgID, a.LinkID, a.LinkID)
	}
	flag := map[XDPMode]string{XDPModeDriver: "xdpdrv", XDPModeGeneric: "xdpgeneric", XDPModeOffload: "xdpoffload"}[a.Mode]
	if flag == "" {
		flag = "xdp"
	}
	hint := fmt.Sprintf("remove it with: ip link set dev %s %s off", ifname, flag)
	if a.LinkErr != "" {
		hint += fmt.Sprintf(" (unless a bpf_link holds it; that could not be checked: %s)", a.LinkErr)
	}
	return hint
}

// Inspect reads an interface's MAC, queue counts, XDP features and attached
// XDP program in the namespace r runs in (nil: the caller's).
//
// It takes an NSRunner rather than a netlink handle because the "netdev"
// generic netlink family answers about the namespace its socket was opened
// in: rtnetlink and genetlink sockets are both opened on a thread inside the
// namespace, so one Inspect works for the host's uplink and for a test's veth
// alike. A missing interface gives an error wrapping ErrNoSuchInterface; a
// kernel without the netdev family (before 6.3) gives XDPFeatures with
// Source "unavailable: ...", not an error.
func Inspect(r *NSRunner, name string) (*Uplink, error) {
	var up *Uplink
	err := r.Do(func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				list := "ip link"
				if p := r.Path(); p != "" {
					list = fmt.Sprintf("ip -n %s link", filepath.Base(p))
				}
				return fmt.Errorf("uplink %q: %w in %s (list them with '%s')", name, ErrNoSuchInterface, nsName(r.Path()), list)
			}
			return fmt.Errorf("look up uplink %q: %w", name, err)
		}
		a := l.Attrs()
		up = &Uplink{Name: a.Name, Index: a.Index, MAC: a.HardwareAddr, RxQueues: a.NumRxQueues, TxQueues: a.NumTxQueues}
		up.XDP = readXDPFeatures(a.Index)
		up.Attached = attachedFromAttrs(a)
		return nil
	})
	if err != nil {
		return nil, err
	}
	up.Attached.findLink(up.Index)
	return up, nil
}

func attachedFromAttrs(attrs *netlink.LinkAttrs) AttachedXDP {
	var a AttachedXDP
	if x := attrs.Xdp; x != nil && x.Attached {
		a.Mode = xdpModeFromAttached(x.AttachMode)
		a.ProgID = x.ProgId
	}
	return a
}

// findLink fills in LinkID or LinkErr. BPF object IDs are global, so this
// needs no namespace.
func (a *AttachedXDP) findLink(ifindex int) {
	if !a.Present() {
		return
	}
	id, err := XDPLinkHolding(ifindex, a.ProgID)
	if err != nil {
		a.LinkErr = err.Error()
	}
	a.LinkID = id
}

// AttachedXDPOf reports the XDP program attached to the interface name in
// the namespace r runs in (nil: the caller's), and the bpf_link holding it
// if one does.
func AttachedXDPOf(r *NSRunner, name string) (AttachedXDP, error) {
	var a AttachedXDP
	var ifindex int
	err := r.Do(func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				return fmt.Errorf("%q: %w in %s", name, ErrNoSuchInterface, nsName(r.Path()))
			}
			return fmt.Errorf("look up %q: %w", name, err)
		}
		ifindex = l.Attrs().Index
		a = attachedFromAttrs(l.Attrs())
		return nil
	})
	if err != nil {
		return a, err
	}
	a.findLink(ifindex)
	return a, nil
}

// XDPLinkHolding returns the ID of the bpf_link that attaches XDP program
// progID to ifindex, 0 if there is none (the program was attached through
// netlink). progID 0 matches any program. An ifindex is only unique within a
// namespace while link IDs are global, so matching the program as well keeps
// a test's veth from being mistaken for the host's device with the same
// ifindex. Searching needs CAP_SYS_ADMIN.
func XDPLinkHolding(ifindex int, progID uint32) (uint32, error) {
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil || info.Type != link.XDPType {
			continue
		}
		x := info.XDP()
		if x == nil || int(x.Ifindex) != ifindex || (progID != 0 && uint32(info.Program) != progID) {
			continue
		}
		return uint32(info.ID), nil
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("list bpf_links: %w", err)
	}
	return 0, nil
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
