package hostnet

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// What a VM may not claim: a MAC address of the host (its interfaces, the
// uplink's peer where it can be seen), a tap another VM uses, and, as a
// port, the loopback device or another VM's tap unless asked for.

// tapOwners are the taps the VMs of every dataplane in this process use:
// one tap, one VM. A second VM on a tap would get the first one's frames,
// and removing it would detach the first one's transmit program.
var (
	tapMu     sync.Mutex
	tapOwners = map[tapKey]string{}
)

type tapKey struct{ netns, name string }

func (d *Dataplane) claimTap(name, vm string) error {
	tapMu.Lock()
	defer tapMu.Unlock()
	k := tapKey{d.cfg.NetNS, name}
	if owner, ok := tapOwners[k]; ok && owner != vm {
		return fmt.Errorf("%w: VM %s: tap %s is VM %s's; one tap serves one VM: give this VM its own tap (or remove VM %s first)", ErrExists, vm, name, owner, owner)
	}
	tapOwners[k] = vm
	return nil
}

func (d *Dataplane) releaseTap(name, vm string) {
	tapMu.Lock()
	defer tapMu.Unlock()
	k := tapKey{d.cfg.NetNS, name}
	if tapOwners[k] == vm {
		delete(tapOwners, k)
	}
}

// tapOwner is the VM whose tap the interface is ("" if none).
func (d *Dataplane) tapOwner(ifname string) string {
	tapMu.Lock()
	defer tapMu.Unlock()
	return tapOwners[tapKey{d.cfg.NetNS, ifname}]
}

// hostMAC says whose the MAC is if the host's: an interface in the
// uplink's namespace or in the daemon's own, or the uplink's veth peer
// when its namespace is a named one (/run/netns). "" if none. Called with
// d.mu held.
func (d *Dataplane) hostMAC(mac net.HardwareAddr) (string, error) {
	links, err := d.nl.LinkList()
	if err != nil {
		return "", fmt.Errorf("list interfaces in %s: %w", nsName(d.cfg.NetNS), err)
	}
	for _, l := range links {
		if bytes.Equal(l.Attrs().HardwareAddr, mac) {
			what := "interface " + l.Attrs().Name
			if l.Attrs().Index == d.index {
				what += " (the uplink)"
			}
			return what + " in " + nsName(d.cfg.NetNS), nil
		}
	}
	if d.cfg.NetNS != "" {
		if own, err := netlink.LinkList(); err == nil {
			for _, l := range own {
				if bytes.Equal(l.Attrs().HardwareAddr, mac) {
					return "interface " + l.Attrs().Name + " in the daemon's namespace", nil
				}
			}
		}
	}
	if peer := d.vethPeerMAC(); peer != nil && bytes.Equal(peer, mac) {
		return "the uplink's peer (the other end of veth " + d.cfg.Uplink + ")", nil
	}
	return "", nil
}

// vethPeerMAC is the MAC of the uplink's veth peer, if the uplink is a
// veth whose peer lives in a namespace named under /run/netns (or in the
// uplink's own). nil otherwise: a NIC's wire peer is not visible.
func (d *Dataplane) vethPeerMAC() net.HardwareAddr {
	l, err := d.nl.LinkByIndex(d.index)
	if err != nil || l.Type() != "veth" {
		return nil
	}
	a := l.Attrs()
	if a.ParentIndex == 0 {
		return nil
	}
	if a.NetNsID < 0 {
		if p, err := d.nl.LinkByIndex(a.ParentIndex); err == nil {
			return p.Attrs().HardwareAddr
		}
		return nil
	}
	names, _ := filepath.Glob("/run/netns/*")
	for _, name := range names {
		f, err := os.Open(name)
		if err != nil {
			continue
		}
		id, err := d.nl.GetNetNsIdByFd(int(f.Fd()))
		if err != nil || id != a.NetNsID {
			f.Close()
			continue
		}
		h, err := netlink.NewHandleAt(netns.NsHandle(f.Fd()))
		f.Close()
		if err != nil {
			return nil
		}
		defer h.Close()
		if p, err := h.LinkByIndex(a.ParentIndex); err == nil {
			return p.Attrs().HardwareAddr
		}
		return nil
	}
	return nil
}

// PortOptions qualify a port.
type PortOptions struct {
	// CrossVM allows the port to be another VM's tap: the VM's program can
	// then send frames straight into that VM. Logged in the audit log, and
	// Ports names the other VM.
	CrossVM bool
}

// checkPortTarget refuses the loopback device, and another VM's tap unless
// opts allow it; it returns the other VM, if any.
func (vm *VM) checkPortTarget(n uint32, l netlink.Link, opts PortOptions) (string, error) {
	a := l.Attrs()
	if a.Flags&net.FlagLoopback != 0 {
		return "", fmt.Errorf("%w: VM %s: port %d: %s is the loopback device: frames redirected there would enter the host's own stack; name a device that leads out of the host or into a VM",
			ErrInvalid, vm.name, n, a.Name)
	}
	owner := vm.d.tapOwner(a.Name)
	if owner == "" || owner == vm.name {
		return "", nil
	}
	if !opts.CrossVM {
		return "", fmt.Errorf("%w: VM %s: port %d: %s is VM %s's tap: a port into another VM lets this VM's program send straight into it; if that is meant, ask for it explicitly (xdp-hostd port add --cross-vm, or \"cross_vm\": true)",
			ErrInvalid, vm.name, n, a.Name, owner)
	}
	return owner, nil
}
