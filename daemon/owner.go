package daemon

import (
	"errors"
	"fmt"
	"net"
	"strings"
)

// ErrNotOwner is wrapped by errors of requests that name a VM with an
// owner (a libvirt domain's UUID and the interface's MAC) it does not have:
// the VM is somebody else's and is left alone.
var ErrNotOwner = errors.New("not this owner's VM")

// VMOwner identifies who registered a VM: the libvirt hook gives its
// domain's UUID and the interface's MAC, so that a release or a tap
// attach touches only what that domain registered.
type VMOwner struct {
	UUID string `json:"uuid"`
	MAC  string `json:"mac"`
}

// check accepts a VM record with the owner's UUID and MAC.
func (o VMOwner) check(name string) func(VMConfig) error {
	return func(vc VMConfig) error {
		if o.UUID == "" || o.MAC == "" {
			return fmt.Errorf("%w: give the domain's uuid and the interface's mac", errBadRequest)
		}
		want, err := net.ParseMAC(o.MAC)
		if err != nil {
			return fmt.Errorf("%w: mac %q is not a MAC address", errBadRequest, o.MAC)
		}
		have, _ := net.ParseMAC(vc.MAC)
		if !strings.EqualFold(vc.UUID, o.UUID) || have.String() != want.String() {
			return fmt.Errorf("%w: VM %s has uuid %q and MAC %s, not uuid %s and MAC %s: it was registered by something else and is left alone",
				ErrNotOwner, name, vc.UUID, vc.MAC, o.UUID, want)
		}
		return nil
	}
}

// RemoveOwnedVM removes the VM only if owner registered it (same UUID and
// MAC): the libvirt hook's release.
func (d *Daemon) RemoveOwnedVM(name string, owner VMOwner) error {
	return d.removeVM(name, owner.check(name))
}

// AttachTap gives a tap VM whose tap someone else creates ("tap_mode":
// "external": libvirt's managed <interface type='ethernet'>) the tap, now
// that it exists; owner, when given, must be who registered the VM. The
// state records the tap, so that a restart adopts it.
func (d *Daemon) AttachTap(name, tap string, owner *VMOwner) error {
	d.mu.Lock()
	vm, ok := d.byVM[name]
	d.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %q", ErrNoSuchVM, name)
	}
	d.smu.Lock()
	var vc VMConfig
	if e := d.entries[name]; e != nil {
		vc = e.cfg
	}
	d.smu.Unlock()
	if owner != nil {
		if err := owner.check(name)(vc); err != nil {
			return err
		}
	}
	if tap == "" {
		return fmt.Errorf("%w: tap: name the VM's tap", errBadRequest)
	}
	if err := vm.AttachTap(tap); err != nil {
		return err
	}
	if vc.Tap == tap {
		return nil
	}
	return d.saveVMs(func(m map[string]*vmEntry) {
		if e := m[name]; e != nil {
			e.cfg.Tap = tap
		}
	})
}

// AttachTapRequest is the body of POST /v1/vms/{vm}/tap.
type AttachTapRequest struct {
	Tap   string   `json:"tap"`
	Owner *VMOwner `json:"owner,omitempty"`
}
