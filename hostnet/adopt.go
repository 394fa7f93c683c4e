package hostnet

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/cilium/ebpf"

	hostbpf "github.com/xdp-hostd/xdp-hostd/bpf"
	"github.com/xdp-hostd/xdp-hostd/guestprog"
)

// ErrNoPinnedProgram: no running copy of a VM's program was left on the
// pins for AdoptPinnedProgram to keep.
var ErrNoPinnedProgram = errors.New("no running copy of the program on the pins")

// FailClosed puts the built-in drop program in the VM's slot: every frame
// for the VM is dropped (and counted as such) until another program is
// installed. It is what a VM runs when the program it should run is lost.
func (vm *VM) FailClosed() (uint32, error) {
	b, err := hostbpf.Guest("drop")
	if err != nil {
		return 0, err
	}
	obj, err := guestprog.Parse(b, "")
	if err != nil {
		return 0, fmt.Errorf("built-in drop program: %w", err)
	}
	return vm.SetProgram(obj, "fail-closed")
}

// AdoptPinnedProgram keeps running the VM program that a previous daemon
// installed as program id (the daemon's ID) and left running on the pins,
// for when the object to load it again from is lost. It works while the
// dataplane runs on what it adopted (after Open, before Activate): the VM
// is found by its MAC in the running dispatcher; the program its slot runs
// must be the one whose maps are pinned under id. The VM then uses that
// program's host maps (its counters go on counting), filled with this
// VM's current port table, tap and AF_XDP sockets, and the new dispatcher
// runs the same kernel program, with its own maps and state, untouched.
// It returns the program's kernel ID; on error nothing changed.
func (vm *VM) AdoptPinnedProgram(id uint64) (_ uint32, err error) {
	d := vm.d
	if d.pinDir == "" || !d.Adopted() {
		return 0, fmt.Errorf("%w: VM %s: no dataplane was left running on pins", ErrNoPinnedProgram, vm.name)
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	info, err := d.link.Info()
	if err != nil {
		return 0, fmt.Errorf("VM %s: the running dispatcher: %w", vm.name, err)
	}
	gen := filepath.Join(d.pinDir, "prog-"+strconv.FormatUint(uint64(info.Program), 10))
	lookup := func(name string, key any, val *uint32) error {
		m, err := ebpf.LoadPinnedMap(filepath.Join(gen, name), nil)
		if err != nil {
			return fmt.Errorf("%w: VM %s: the running dispatcher's %s: %w", ErrNoPinnedProgram, vm.name, name, err)
		}
		defer m.Close()
		if err := m.Lookup(key, val); err != nil {
			return fmt.Errorf("%w: VM %s (MAC %s) runs no program in the running dispatcher (%s): %w", ErrNoPinnedProgram, vm.name, vm.mac, name, err)
		}
		return nil
	}
	var oldSlot, kid uint32
	if err := lookup("mac_slot", toMACKey(vm.mac), &oldSlot); err != nil {
		return 0, err
	}
	if err := lookup("vm_progs", oldSlot, &kid); err != nil {
		return 0, err
	}
	pin := guestPinName(ebpf.ProgramID(kid), id)
	if fi, err := os.Stat(filepath.Join(d.pinDir, pin)); err != nil || !fi.IsDir() {
		return 0, fmt.Errorf("%w: VM %s runs kernel program %d, and nothing pinned says it is program %d (no %s)", ErrNoPinnedProgram, vm.name, kid, id, pin)
	}
	prog, err := ebpf.NewProgramFromID(ebpf.ProgramID(kid))
	if err != nil {
		return 0, fmt.Errorf("VM %s: open running program %d: %w", vm.name, kid, err)
	}
	defer func() {
		if err != nil {
			prog.Close()
		}
	}()
	maps, err := runningHostMaps(prog, oldSlot, vm.maps)
	if err != nil {
		return 0, fmt.Errorf("VM %s: program %d (kernel %d): %w", vm.name, id, kid, err)
	}
	defer func() {
		if err != nil {
			maps.closeAdopted()
		}
	}()
	if err := vm.fillHostMaps(maps.HostMaps); err != nil {
		return 0, err
	}
	if err := d.dispatch.VmProgs.Put(uint32(vm.slot), prog); err != nil {
		return 0, fmt.Errorf("VM %s: put running program %d into slot %d: %w", vm.name, kid, vm.slot, err)
	}
	// From here on the VM is the adopted program's.
	old, oldPin, oldMaps := vm.prog, vm.progPin, vm.maps
	vm.prog, vm.progPin, vm.maps = guestprog.Adopted(prog, ebpf.ProgramID(kid)), pin, maps.HostMaps
	d.claim(pin, true)
	if old != nil {
		d.unpinGuest(oldPin)
		old.Close()
	}
	maps.closeReplaced(oldMaps)
	d.audit("prog_adopt", "vm", vm.name, "slot", vm.slot, "program", id, "kernel_id", kid, "was_slot", oldSlot)
	return kid, nil
}

// adoptedMaps are host maps of a running program, some of them (those the
// program does not use) the VM's own.
type adoptedMaps struct {
	*guestprog.HostMaps
	found map[*ebpf.Map]bool
}

// runningHostMaps finds the host maps (by their kernel names, which carry
// the slot) of a running VM program; those it does not use are taken from
// own.
func runningHostMaps(prog *ebpf.Program, slot uint32, own *guestprog.HostMaps) (_ *adoptedMaps, err error) {
	info, err := prog.Info()
	if err != nil {
		return nil, err
	}
	ids, ok := info.MapIDs()
	if !ok {
		return nil, errors.New("the kernel does not say which maps the program uses")
	}
	a := &adoptedMaps{HostMaps: &guestprog.HostMaps{Delivery: own.Delivery}, found: map[*ebpf.Map]bool{}}
	byName := map[string]**ebpf.Map{}
	for abbr, dst := range map[string]**ebpf.Map{"cnt": &a.Counters, "tap": &a.Tap, "xsk": &a.XSKs, "ports": &a.PortTable, "id": &a.VM, "cost": &a.Cost} {
		byName[fmt.Sprintf("vm%d_%s", slot, abbr)] = dst
	}
	defer func() {
		if err != nil {
			a.closeAdopted()
		}
	}()
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			return nil, fmt.Errorf("open its map %d: %w", id, err)
		}
		mi, err := m.Info()
		if dst, ok := byName[mi.Name]; err == nil && ok && *dst == nil {
			*dst = m
			a.found[m] = true
			continue
		}
		m.Close()
	}
	if a.Counters == nil {
		return nil, errors.New("it uses no VM counters: not a VM program of this daemon")
	}
	need := map[guestprog.Delivery]**ebpf.Map{guestprog.DeliverTap: &a.Tap, guestprog.DeliverXSK: &a.XSKs}[own.Delivery]
	if need != nil && *need == nil {
		return nil, fmt.Errorf("it delivers otherwise than by %s, as the VM now does", own.Delivery)
	}
	for dst, mine := range map[**ebpf.Map]*ebpf.Map{&a.Tap: own.Tap, &a.XSKs: own.XSKs, &a.PortTable: own.PortTable, &a.VM: own.VM, &a.Cost: own.Cost} {
		if *dst == nil {
			*dst = mine
		}
	}
	return a, nil
}

// closeAdopted closes the maps found in the kernel (not own's).
func (a *adoptedMaps) closeAdopted() {
	for m := range a.found {
		m.Close()
	}
}

// closeReplaced closes the VM's own maps that the adopted ones replaced.
func (a *adoptedMaps) closeReplaced(own *guestprog.HostMaps) {
	for _, m := range []*ebpf.Map{own.Counters, own.Tap, own.XSKs, own.PortTable, own.VM, own.Cost} {
		if m != nil && m != a.Counters && m != a.Tap && m != a.XSKs && m != a.PortTable && m != a.VM && m != a.Cost {
			m.Close()
		}
	}
}

// fillHostMaps makes maps say what the VM's own say: its port table, its
// tap, its AF_XDP sockets. The caller holds vm.mu.
func (vm *VM) fillHostMaps(maps *guestprog.HostMaps) error {
	d := vm.d
	clear := func(m *ebpf.Map) error {
		var keys []uint32
		var next uint32
		err := m.NextKey(nil, &next)
		for ; err == nil; err = m.NextKey(next, &next) {
			keys = append(keys, next)
		}
		if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
		for _, k := range keys {
			if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return err
			}
		}
		return nil
	}
	return d.ns.Do(func() error {
		if maps.PortTable != vm.maps.PortTable {
			if err := clear(maps.PortTable); err != nil {
				return fmt.Errorf("VM %s: clear the running program's port table: %w", vm.name, err)
			}
			for _, p := range vm.ports {
				if err := maps.PortTable.Put(p.Number, uint32(p.Ifindex)); err != nil {
					return fmt.Errorf("VM %s: port %d (%s) into the running program's port table: %w", vm.name, p.Number, p.Ifname, err)
				}
			}
		}
		if maps.Tap != vm.maps.Tap && vm.tap != nil {
			if err := maps.Tap.Put(uint32(0), uint32(vm.tap.Index())); err != nil {
				return fmt.Errorf("VM %s: tap %s as the running program's delivery target: %w", vm.name, vm.tap.Name(), err)
			}
		}
		if maps.XSKs != vm.maps.XSKs {
			// An XSKMAP cannot be read back: its entries are deleted by
			// key, every queue the uplink has.
			for q := 0; q < min(d.queues, MaxQueues); q++ {
				if err := maps.XSKs.Delete(uint32(q)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					return fmt.Errorf("VM %s: clear the running program's AF_XDP socket of queue %d: %w", vm.name, q, err)
				}
			}
			for q, fd := range vm.xsks {
				if err := maps.XSKs.Put(uint32(q), uint32(fd)); err != nil {
					return fmt.Errorf("VM %s: AF_XDP socket of queue %d into the running program's map: %w", vm.name, q, err)
				}
			}
		}
		return nil
	})
}
