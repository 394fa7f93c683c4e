package hostnet

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	hostbpf "github.com/xdp-hostd/xdp-hostd/bpf"
	"github.com/xdp-hostd/xdp-hostd/guestprog"
)

// VMSpec describes a VM behind the uplink.
type VMSpec struct {
	// Name identifies the VM: letters, digits, '.', '_' and '-', at most
	// 64 characters.
	Name string
	// MAC is the VM's own (guest-side) MAC address: packets to it are the
	// VM's, and it is the only source address the VM may send from.
	MAC net.HardwareAddr
	// Queues are uplink RX queues dedicated to the VM: every packet that
	// arrives on them is the VM's. Optional; without queues the VM gets the
	// packets addressed to its MAC on any queue that is not dedicated.
	Queues []int
	// Tap is the name of the VM's tap device (delivery by copy). If a tap
	// of that name exists (QEMU or libvirt created it and holds its
	// queues), it is adopted: the dataplane attaches to it and leaves it in
	// place when the VM is removed. Otherwise the dataplane creates it and
	// holds its queues (the demo and tests read them). Default "xh<slot>-<uplink>".
	Tap string
	// TapQueues is the number of queues of the tap; default 1.
	TapQueues int
	// TapMode says who opens the tap's queues when the dataplane creates
	// it: TapHeld (default), TapQEMU or TapExternal. A tap that exists is
	// adopted whatever the mode.
	TapMode TapMode
	// Delivery is how passed packets reach the VM: DeliverTap (default;
	// the host creates the tap) or DeliverXSK (AF_XDP sockets on the VM's
	// dedicated queues, set with SetSocket; for vhost-user).
	Delivery guestprog.Delivery
	// Closed starts the VM with the built-in drop program instead of the
	// pass program: every frame for it is dropped until a program is
	// installed. A VM arriving by migration starts so, and gets its program
	// (with its maps filled) at the final import.
	Closed bool
}

// TapMode is who makes a VM's tap and reads its queues.
type TapMode string

const (
	// TapHeld: the dataplane creates a multi-queue tap and holds its
	// queues (the demo and tests read them); QEMU cannot open it.
	TapHeld TapMode = ""
	// TapQEMU: the dataplane creates a persistent tap with the flags QEMU
	// and libvirt open a tap with (QEMUTapFlags) and holds no queue of it;
	// QEMU (-netdev tap,ifname=NAME,script=no,downscript=no) or libvirt
	// (<interface type='ethernet'><target dev='NAME' managed='no'/>) opens
	// it. Removing the VM deletes it.
	TapQEMU TapMode = "qemu"
	// TapExternal: the dataplane never creates the tap; libvirt
	// (<interface type='ethernet'>, managed) or QEMU creates it, and
	// AttachTap adopts it once it exists. Until then the VM's frames are
	// not delivered.
	TapExternal TapMode = "external"
)

var vmNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Validate checks the spec on its own (not against other VMs).
func (s *VMSpec) Validate() error {
	if !vmNameRE.MatchString(s.Name) {
		return fmt.Errorf("%w: VM name %q: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", ErrInvalid, s.Name)
	}
	if len(s.MAC) != 6 {
		return fmt.Errorf("%w: VM %s: MAC %q is not a 6-byte Ethernet address (write it as 02:00:00:00:00:01)", ErrInvalid, s.Name, s.MAC)
	}
	if s.MAC[0]&1 != 0 {
		return fmt.Errorf("%w: VM %s: MAC %s is a multicast address; a VM needs a unicast MAC (first byte even, e.g. 02:...)", ErrInvalid, s.Name, s.MAC)
	}
	if slices.Equal(s.MAC, make(net.HardwareAddr, 6)) {
		return fmt.Errorf("%w: VM %s: MAC 00:00:00:00:00:00 is not a usable address", ErrInvalid, s.Name)
	}
	seen := map[int]bool{}
	for _, q := range s.Queues {
		if seen[q] {
			return fmt.Errorf("%w: VM %s: queue %d listed twice", ErrInvalid, s.Name, q)
		}
		seen[q] = true
	}
	if s.Tap != "" && (len(s.Tap) > 15 || !vmNameRE.MatchString(s.Tap)) {
		return fmt.Errorf("%w: VM %s: tap name %q: use at most 15 letters, digits, '.', '_' or '-'", ErrInvalid, s.Name, s.Tap)
	}
	if s.Delivery == guestprog.DeliverXSK && len(s.Queues) == 0 {
		return fmt.Errorf("%w: VM %s: AF_XDP delivery needs dedicated queues (sockets are bound to queues)", ErrInvalid, s.Name)
	}
	switch s.TapMode {
	case TapHeld, TapQEMU, TapExternal:
	default:
		return fmt.Errorf("%w: VM %s: tap mode %q: use qemu or external (or none: the host holds the tap)", ErrInvalid, s.Name, s.TapMode)
	}
	if s.TapMode != TapHeld && s.Delivery != guestprog.DeliverTap {
		return fmt.Errorf("%w: VM %s: tap mode %s is for tap delivery", ErrInvalid, s.Name, s.TapMode)
	}
	if s.TapQueues < 0 || s.TapQueues > 16 {
		return fmt.Errorf("%w: VM %s: tap queues %d: use 1 to 16", ErrInvalid, s.Name, s.TapQueues)
	}
	return nil
}

// VM is one VM's part of the dataplane: its slot, its program, its maps, its
// tap and its port table.
type VM struct {
	d      *Dataplane
	name   string
	slot   int
	mac    net.HardwareAddr
	queues []int

	maps    *guestprog.HostMaps
	tap     *Tap
	tapView atomic.Pointer[Tap] // tap, for Tap(): AttachTap sets it on a VM others see
	tapName string              // the tap this VM claimed (see claimTap)
	tapLink link.Link
	steered []steerRule

	mu      sync.Mutex // serializes program changes and port changes
	prog    *guestprog.Program
	frozen  *guestprog.Program // the drop program standing in for prog (Freeze), nil when not frozen
	progSet time.Time
	progPin string // pin directory of prog's maps ("" when none)
	ports   map[uint32]Port
	xsks    map[int]int // RX queue -> AF_XDP socket fd given to SetSocket
}

type steerRule struct {
	queue int
	loc   uint32
}

// Port is an entry of a VM's port table.
type Port struct {
	Number  uint32 `json:"port"`
	Ifname  string `json:"ifname"`
	Ifindex int    `json:"ifindex"`
	// VM is the other VM whose tap this port is: the VM's program can send
	// straight into it (added with PortOptions.CrossVM). Empty otherwise.
	VM string `json:"vm,omitempty"`
}

// AddVM creates the VM's tap, maps and built-in program and only then makes
// its queues and MAC point at it. On error nothing of it is left.
func (d *Dataplane) AddVM(spec VMSpec) (_ *VM, err error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()

	if _, ok := d.vms[spec.Name]; ok {
		return nil, fmt.Errorf("VM %s: %w", spec.Name, ErrExists)
	}
	for _, other := range d.vms {
		if slices.Equal(other.mac, spec.MAC) {
			return nil, fmt.Errorf("%w: VM %s: MAC %s is already VM %s's; every VM needs its own MAC", ErrExists, spec.Name, spec.MAC, other.name)
		}
		for _, q := range spec.Queues {
			if slices.Contains(other.queues, q) {
				return nil, fmt.Errorf("%w: VM %s: uplink queue %d is already dedicated to VM %s", ErrExists, spec.Name, q, other.name)
			}
		}
	}
	if owner, err := d.hostMAC(spec.MAC); err != nil {
		return nil, fmt.Errorf("VM %s: %w", spec.Name, err)
	} else if owner != "" {
		return nil, fmt.Errorf("%w: VM %s: MAC %s is the host's (%s): the VM would take the host's traffic; give the VM its own MAC (such as 52:54:00:xx:xx:xx)", ErrExists, spec.Name, spec.MAC, owner)
	}
	for _, q := range spec.Queues {
		if q < 0 || q >= d.queues || q >= MaxQueues {
			return nil, fmt.Errorf("%w: VM %s: queue %d is out of range: uplink %s has RX queues 0-%d", ErrInvalid, spec.Name, q, d.cfg.Uplink, min(d.queues, MaxQueues)-1)
		}
	}
	slot := -1
	for i, vm := range d.slots {
		if vm == nil {
			slot = i
			break
		}
	}
	if slot < 0 {
		return nil, fmt.Errorf("%w: VM %s: all %d VM slots of uplink %s are in use", ErrExists, spec.Name, MaxVMs, d.cfg.Uplink)
	}
	if spec.Tap == "" && spec.Delivery == guestprog.DeliverTap && spec.TapMode != TapExternal {
		spec.Tap = fmt.Sprintf("xh%d-%s", slot, d.cfg.Uplink)
		if len(spec.Tap) > 15 {
			spec.Tap = spec.Tap[:15]
		}
	}
	if spec.TapQueues == 0 {
		spec.TapQueues = 1
	}

	vm := &VM{
		d: d, name: spec.Name, slot: slot,
		mac:    slices.Clone(spec.MAC),
		queues: slices.Clone(spec.Queues),
		ports:  map[uint32]Port{},
	}
	defer func() {
		if err != nil {
			vm.teardown()
		}
	}()
	if spec.Tap != "" {
		if err := d.claimTap(spec.Tap, spec.Name); err != nil {
			return nil, err
		}
		vm.tapName = spec.Tap
	}

	if vm.maps, err = guestprog.NewHostMaps(fmt.Sprint(slot), spec.Delivery, spec.MAC); err != nil {
		return nil, fmt.Errorf("VM %s: %w", spec.Name, err)
	}
	if err := d.ns.Do(func() error { return vm.maps.PortTable.Put(uint32(UplinkPort), uint32(d.index)) }); err != nil {
		return nil, fmt.Errorf("VM %s: add uplink as port 0: %w", spec.Name, err)
	}
	vm.ports[UplinkPort] = Port{Number: UplinkPort, Ifname: d.cfg.Uplink, Ifindex: d.index}
	d.audit("port_add", "vm", spec.Name, "port", UplinkPort, "ifname", d.cfg.Uplink, "ifindex", d.index, "reason", "uplink")
	if spec.Delivery == guestprog.DeliverTap {
		if err := vm.setupTap(spec); err != nil {
			return nil, fmt.Errorf("VM %s: %w", spec.Name, err)
		}
	}

	obj, what := (*guestprog.Object)(nil), "built-in"
	if spec.Closed {
		obj, what, err = dropProgram()
	} else {
		obj, err = builtinProgram()
	}
	if err != nil {
		return nil, err
	}
	if err := vm.install(obj, what, 0, nil); err != nil {
		return nil, fmt.Errorf("VM %s: %w", spec.Name, err)
	}

	// Only now does traffic reach the VM.
	for _, q := range spec.Queues {
		if err := d.dispatch.QueueSlot.Put(uint32(q), uint32(slot+1)); err != nil {
			return nil, fmt.Errorf("VM %s: dedicate queue %d: %w", spec.Name, q, err)
		}
	}
	if err := d.dispatch.MacSlot.Put(toMACKey(spec.MAC), uint32(slot)); err != nil {
		return nil, fmt.Errorf("VM %s: register MAC %s: %w", spec.Name, spec.MAC, err)
	}
	if err := d.cacheMAC(spec.MAC, slot); err != nil {
		return nil, fmt.Errorf("VM %s: %w", spec.Name, err)
	}
	d.steer(vm)

	d.vms[spec.Name] = vm
	d.slots[slot] = vm
	if err := d.refreshFlood(); err != nil {
		d.log.Warn("flood list", "err", err)
	}
	d.audit("vm_add", "vm", spec.Name, "slot", slot, "mac", spec.MAC.String(), "queues", spec.Queues, "tap", spec.Tap)
	return vm, nil
}

// setupTap creates the VM's tap, makes it the delivery target and attaches
// the transmit program (anti-spoof, out of the uplink) to it.
func (vm *VM) setupTap(spec VMSpec) (err error) {
	d := vm.d
	if _, lerr := d.nl.LinkByName(spec.Tap); lerr == nil && spec.Tap != "" {
		// The tap exists: QEMU or libvirt made it and holds its queues
		// (or, in TapQEMU mode, a previous daemon made it for QEMU).
		if spec.TapMode == TapQEMU {
			vm.tap, err = TakePersistentTap(d.cfg.NetNS, spec.Tap)
		} else {
			vm.tap, err = AdoptTap(d.cfg.NetNS, spec.Tap)
		}
		if err != nil {
			return err
		}
		d.log.Info("adopted existing tap", "vm", spec.Name, "tap", spec.Tap)
	} else {
		switch spec.TapMode {
		case TapExternal:
			d.log.Info("VM waits for its tap", "vm", spec.Name, "tap", spec.Tap)
			return nil
		case TapQEMU:
			vm.tap, err = CreatePersistentTap(TapOptions{Name: spec.Tap, Queues: spec.TapQueues, NetNS: d.cfg.NetNS})
		default:
			vm.tap, err = CreateTap(TapOptions{Name: spec.Tap, Queues: spec.TapQueues, NetNS: d.cfg.NetNS})
		}
		if err != nil {
			return err
		}
	}
	return vm.useTap(spec.Tap)
}

// useTap makes vm.tap the delivery target and attaches the transmit
// program to it.
func (vm *VM) useTap(name string) (err error) {
	d := vm.d
	tapIndex := vm.tap.Index()
	vm.tapView.Store(vm.tap)
	if err := d.ns.Do(func() error {
		if err := vm.maps.Tap.Put(uint32(0), uint32(tapIndex)); err != nil {
			return fmt.Errorf("set tap %s as delivery target: %w", name, err)
		}
		if err := d.vmtx.TapUplink.Put(uint32(tapIndex), uint32(d.index)); err != nil {
			return fmt.Errorf("route tap %s to uplink: %w", name, err)
		}
		return nil
	}); err != nil {
		return err
	}
	cfg := tapCfg{MAC: toMACKey(vm.mac), Slot: uint32(vm.slot)}
	if err := d.vmtx.TapCfg.Put(uint32(tapIndex), cfg); err != nil {
		return fmt.Errorf("register tap %s: %w", name, err)
	}
	if l, ok := d.adoptTxLink(tapIndex, d.vmtx.VmTx); ok {
		vm.tapLink = l
		return nil
	}
	// Generic (skb) mode, never native: a guest behind QEMU's tap offloads
	// its checksums (virtio-net's default), so its UDP and TCP frames
	// arrive with CHECKSUM_PARTIAL in the virtio-net header. The tap's
	// native XDP path runs on the bare frame and drops that state, so a
	// redirected frame left with its checksum unfinished (the wire side
	// counts it in InCsumErrors); in generic mode the skb keeps it, and the
	// uplink (or a veth peer) finishes it. Frames with GSO took the
	// generic path on taps anyway.
	if vm.tapLink, _, err = d.attach(d.vmtx.VmTx, tapIndex, name, AttachGeneric); err != nil {
		return err
	}
	return d.pinTxLink(tapIndex, vm.tapLink)
}

// AttachTap adopts the tap of a VM whose tap someone else creates
// (TapExternal), once it exists: libvirt's started hook calls it with the
// tap libvirt made. The same tap again is a no-op; a tap of that name made
// anew (a restarted QEMU) replaces the old one. A VM that has another tap,
// or is not a tap VM, is refused.
func (vm *VM) AttachTap(name string) (err error) {
	d := vm.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.vms[vm.name] != vm {
		return fmt.Errorf("%w: VM %s was removed", ErrInvalid, vm.name)
	}
	if vm.maps.Delivery != guestprog.DeliverTap {
		return fmt.Errorf("%w: VM %s delivers to AF_XDP sockets (vhost-user), not to a tap", ErrInvalid, vm.name)
	}
	if len(name) > 15 || !vmNameRE.MatchString(name) {
		return fmt.Errorf("%w: VM %s: tap name %q: use at most 15 letters, digits, '.', '_' or '-'", ErrInvalid, vm.name, name)
	}
	if vm.tapName != "" && vm.tapName != name {
		return fmt.Errorf("%w: VM %s has tap %s, not %s", ErrExists, vm.name, vm.tapName, name)
	}
	l, lerr := d.nl.LinkByName(name)
	if lerr != nil {
		return fmt.Errorf("VM %s: tap %q: %w in %s", vm.name, name, ErrNoSuchInterface, nsName(d.cfg.NetNS))
	}
	if vm.tap != nil {
		if vm.tap.Index() == l.Attrs().Index {
			return nil
		}
		vm.dropTap()
	}
	if vm.tapName == "" {
		if err := d.claimTap(name, vm.name); err != nil {
			return err
		}
		vm.tapName = name
	}
	if vm.tap, err = AdoptTap(d.cfg.NetNS, name); err != nil {
		return fmt.Errorf("VM %s: %w", vm.name, err)
	}
	if err := vm.useTap(name); err != nil {
		vm.dropTap()
		return fmt.Errorf("VM %s: %w", vm.name, err)
	}
	if err := d.refreshFlood(); err != nil {
		d.log.Warn("flood list", "err", err)
	}
	d.log.Info("adopted the VM's tap", "vm", vm.name, "tap", name, "ifindex", vm.tap.Index())
	d.audit("vm_tap", "vm", vm.name, "tap", name, "ifindex", vm.tap.Index())
	return nil
}

// dropTap undoes useTap (the delivery target stays until the next useTap
// replaces it; a missing device delivers nothing).
func (vm *VM) dropTap() {
	d := vm.d
	if vm.tap == nil {
		return
	}
	_ = d.vmtx.TapCfg.Delete(uint32(vm.tap.Index())) // gone with the device, or not set
	_ = d.vmtx.TapUplink.Delete(uint32(vm.tap.Index()))
	if vm.tapLink != nil {
		d.unpinTxLink(vm.tap.Index(), vm.tapLink)
		vm.tapLink.Close()
		vm.tapLink = nil
	}
	vm.tapView.Store(nil)
	vm.tap.Close()
	vm.tap = nil
}

// SetSocket makes the AF_XDP socket fd the VM's delivery target for RX
// queue q (a VM with Delivery xsk; q one of its dedicated queues).
func (vm *VM) SetSocket(q int, fd int) error {
	if vm.maps.Delivery != guestprog.DeliverXSK {
		return fmt.Errorf("%w: VM %s delivers into a tap, not AF_XDP sockets", ErrInvalid, vm.name)
	}
	if !slices.Contains(vm.queues, q) {
		return fmt.Errorf("%w: VM %s: queue %d is not one of its dedicated queues %v", ErrInvalid, vm.name, q, vm.queues)
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if err := vm.maps.XSKs.Put(uint32(q), uint32(fd)); err != nil {
		return fmt.Errorf("VM %s: set AF_XDP socket for queue %d: %w", vm.name, q, err)
	}
	if vm.xsks == nil {
		vm.xsks = map[int]int{}
	}
	vm.xsks[q] = fd
	return nil
}

// ClearSocket removes the delivery target of RX queue q; the VM's passed
// packets on q are then counted as undelivered.
func (vm *VM) ClearSocket(q int) error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	delete(vm.xsks, q)
	if err := vm.maps.XSKs.Delete(uint32(q)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("VM %s: clear AF_XDP socket for queue %d: %w", vm.name, q, err)
	}
	return nil
}

type tapCfg struct {
	MAC  macKey
	Slot uint32
	Pad  uint32
}

func dropProgram() (*guestprog.Object, string, error) {
	b, err := hostbpf.Guest("drop")
	if err != nil {
		return nil, "", err
	}
	obj, err := guestprog.Parse(b, "")
	if err != nil {
		return nil, "", fmt.Errorf("built-in drop program: %w", err)
	}
	return obj, "fail-closed", nil
}

func builtinProgram() (*guestprog.Object, error) {
	b, err := hostbpf.Guest("pass")
	if err != nil {
		return nil, err
	}
	return guestprog.Parse(b, "")
}

// steer asks the NIC to steer the VM's MAC to its first dedicated queue.
func (d *Dataplane) steer(vm *VM) {
	if len(vm.queues) == 0 || d.steering != nil {
		return
	}
	var loc uint32
	err := d.ns.Do(func() (err error) {
		loc, err = SteerMAC(d.cfg.Uplink, vm.mac, vm.queues[0])
		return err
	})
	if err != nil {
		if errors.Is(err, ErrNotSupported) {
			d.steering = err
			d.log.Info("no hardware flow steering on this uplink: a VM's traffic reaches its dedicated queue only if something else steers it there; dispatch also matches the VM's MAC on shared queues", "reason", err)
			return
		}
		d.log.Warn("steering by MAC failed", "vm", vm.name, "mac", vm.mac.String(), "queue", vm.queues[0], "err", err)
		return
	}
	vm.steered = append(vm.steered, steerRule{queue: vm.queues[0], loc: loc})
}

// RemoveVM stops the VM's traffic and removes everything the dataplane
// created for it.
func (d *Dataplane) RemoveVM(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	vm, ok := d.vms[name]
	if !ok {
		return fmt.Errorf("%w: no VM named %q", ErrNotFound, name)
	}
	return d.removeLocked(vm)
}

func (d *Dataplane) removeLocked(vm *VM) error {
	d.slots[vm.slot] = nil
	if ferr := d.refreshFlood(); ferr != nil {
		d.log.Warn("flood list", "err", ferr)
	}
	err := vm.teardown()
	delete(d.vms, vm.name)
	d.audit("vm_remove", "vm", vm.name, "slot", vm.slot)
	return err
}

// teardown undoes AddVM in reverse order; safe on a half-built VM.
func (vm *VM) teardown() error {
	d := vm.d
	var errs []error
	ignoreMissing := func(err error) {
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	// First stop traffic from reaching the VM.
	for _, q := range vm.queues {
		if cur, err := lookupU32(d.dispatch.QueueSlot, uint32(q)); err == nil && cur == uint32(vm.slot+1) {
			ignoreMissing(d.dispatch.QueueSlot.Put(uint32(q), uint32(0)))
		}
	}
	if cur, err := lookupU32(d.dispatch.MacSlot, toMACKey(vm.mac)); err == nil && cur == uint32(vm.slot) {
		errs = append(errs, d.uncacheMAC(vm.mac))
		ignoreMissing(d.dispatch.MacSlot.Delete(toMACKey(vm.mac)))
	}
	for _, r := range vm.steered {
		errs = append(errs, d.ns.Do(func() error { return UnsteerMAC(d.cfg.Uplink, r.loc) }))
	}
	vm.steered = nil
	if cur, err := lookupU32(d.dispatch.VmProgs, uint32(vm.slot)); err == nil && vm.prog != nil && cur == uint32(vm.prog.KernelID) {
		ignoreMissing(d.dispatch.VmProgs.Delete(uint32(vm.slot)))
	}
	if vm.frozen != nil {
		if cur, err := lookupU32(d.dispatch.VmProgs, uint32(vm.slot)); err == nil && cur == uint32(vm.frozen.KernelID) {
			ignoreMissing(d.dispatch.VmProgs.Delete(uint32(vm.slot)))
		}
		errs = append(errs, vm.frozen.Close())
		vm.frozen = nil
	}
	if vm.prog != nil {
		d.unpinGuest(vm.progPin)
		errs = append(errs, vm.prog.Close())
		vm.prog, vm.progPin = nil, ""
	}
	if vm.tap != nil {
		ignoreMissing(d.vmtx.TapCfg.Delete(uint32(vm.tap.Index())))
		ignoreMissing(d.vmtx.TapUplink.Delete(uint32(vm.tap.Index())))
	}
	if vm.tapLink != nil {
		d.unpinTxLink(vm.tap.Index(), vm.tapLink)
		errs = append(errs, vm.tapLink.Close())
		vm.tapLink = nil
	}
	if vm.tap != nil {
		vm.tapView.Store(nil)
		errs = append(errs, vm.tap.Close())
		vm.tap = nil
	}
	if vm.maps != nil {
		errs = append(errs, vm.maps.Close())
		vm.maps = nil
	}
	if vm.tapName != "" {
		d.releaseTap(vm.tapName, vm.name)
		vm.tapName = ""
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove VM %s: %w", vm.name, err)
	}
	return nil
}

func lookupU32(m *ebpf.Map, key any) (uint32, error) {
	var v uint32
	err := m.Lookup(key, &v)
	return v, err
}

// install loads obj for this VM and swaps it into the VM's slot with one
// map update; the previous program is released after the swap. key is the
// daemon's ID of the program (0: none): its maps are pinned under it, and
// maps a previous daemon pinned under it are loaded back (a restore).
// given, if not nil, are the maps the program must use (filled by the
// caller, see SetGuestProgramWith): a map of them the program cannot use
// is an error, and nothing is installed.
func (vm *VM) install(obj *guestprog.Object, what string, key uint64, given map[string]*ebpf.Map) error {
	kept := vm.d.pinnedStateMaps(key)
	if given != nil {
		for _, m := range kept {
			m.Close()
		}
		kept = given
	}
	prog, skipped, err := guestprog.LoadKeeping(obj, vm.maps, kept)
	if given == nil {
		for _, m := range kept {
			m.Close() // the program holds its own reference
		}
	}
	if err != nil {
		return err
	}
	if given != nil && len(skipped) > 0 {
		prog.Close()
		var errs []error
		for name, why := range skipped {
			errs = append(errs, fmt.Errorf("map %s: %w", name, why))
		}
		return fmt.Errorf("%w: the program cannot use the maps given: %w", ErrInvalid, errors.Join(errs...))
	}
	for name, why := range skipped {
		vm.d.log.Warn("a map of the restored program starts empty", "vm", vm.name, "program", key, "map", name, "reason", why)
	}
	pinned := prog.ProgArrays()
	if key != 0 {
		for n, m := range prog.StateMaps() {
			pinned[n] = m
		}
	}
	pin, err := vm.d.pinGuestMaps(prog.KernelID, key, pinned)
	if err != nil {
		prog.Close()
		return err
	}
	if err := vm.d.dispatch.VmProgs.Put(uint32(vm.slot), prog.Entry); err != nil {
		vm.d.unpinGuest(pin)
		prog.Close()
		return fmt.Errorf("put program into slot %d: %w", vm.slot, err)
	}
	old, oldPin := vm.prog, vm.progPin
	vm.prog, vm.progSet, vm.progPin = prog, time.Now(), pin
	if old != nil {
		vm.d.unpinGuest(oldPin)
		old.Close()
	}
	if vm.frozen != nil { // a new program ends a freeze
		vm.frozen.Close()
		vm.frozen = nil
	}
	vm.d.audit("prog_install", "vm", vm.name, "slot", vm.slot, "program", what, "entry", obj.Entry, "kernel_id", prog.KernelID,
		"maps_kept", len(kept)-len(skipped))
	return nil
}

// SetProgram loads a VM program (a parsed guest object, already through
// guestprog's policy) and installs it in place of the current one with one
// map update. On error the current program keeps running and nothing of the
// new one is left loaded. It returns the kernel's ID of the new program.
func (vm *VM) SetProgram(obj *guestprog.Object, what string) (uint32, error) {
	return vm.SetGuestProgram(obj, what, 0)
}

// SetGuestProgram is SetProgram for a program the daemon knows by ID (not
// 0): with pins, the program's data maps, .data and .bss are pinned under
// that ID, and when a previous daemon pinned maps under it (the program is
// being restored after a restart) the program is loaded with those maps,
// so what it stored survives. A map the object declares differently is
// created empty (logged).
func (vm *VM) SetGuestProgram(obj *guestprog.Object, what string, id uint64) (uint32, error) {
	return vm.SetGuestProgramWith(obj, what, id, nil)
}

// SetGuestProgramWith is SetGuestProgram with the program's state maps
// given (by name, see guestprog.Program.StateMaps): the caller created
// and filled them, so the program sees their contents from its first
// packet (a program arriving by migration). A given map the program
// cannot use (declared differently) is an error; on any error the VM
// keeps its current program. The program holds its own references: the
// caller still closes the maps it gave.
func (vm *VM) SetGuestProgramWith(obj *guestprog.Object, what string, id uint64, maps map[string]*ebpf.Map) (uint32, error) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if err := vm.install(obj, what, id, maps); err != nil {
		return 0, fmt.Errorf("VM %s: %w", vm.name, err)
	}
	return uint32(vm.prog.KernelID), nil
}

// Freeze stops the VM's program without unloading it: the built-in drop
// program takes its slot, every frame for the VM is dropped, and once
// Freeze returns no CPU runs the program any more (it waits for the
// programs running to finish), so its maps no longer change and can be
// read whole. Thaw puts the program back, with its maps as they were;
// installing another program ends the freeze too. Freezing a frozen VM
// does nothing.
func (vm *VM) Freeze() error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.frozen != nil {
		return nil
	}
	obj, _, err := dropProgram()
	if err != nil {
		return err
	}
	drop, err := guestprog.Load(obj, vm.maps)
	if err != nil {
		return fmt.Errorf("VM %s: freeze: %w", vm.name, err)
	}
	if err := vm.d.dispatch.VmProgs.Put(uint32(vm.slot), drop.Entry); err != nil {
		drop.Close()
		return fmt.Errorf("VM %s: freeze: put the drop program into slot %d: %w", vm.name, vm.slot, err)
	}
	vm.frozen = drop
	vm.d.audit("prog_freeze", "vm", vm.name, "slot", vm.slot, "kernel_id", drop.KernelID)
	if err := WaitForPrograms(); err != nil {
		return fmt.Errorf("VM %s: freeze: %w", vm.name, err)
	}
	return nil
}

// Thaw ends a Freeze: the VM's program runs again. Thawing a VM that is
// not frozen does nothing.
func (vm *VM) Thaw() error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.frozen == nil {
		return nil
	}
	if err := vm.d.dispatch.VmProgs.Put(uint32(vm.slot), vm.prog.Entry); err != nil {
		return fmt.Errorf("VM %s: thaw: put program %d back into slot %d: %w", vm.name, vm.prog.KernelID, vm.slot, err)
	}
	vm.frozen.Close()
	vm.frozen = nil
	vm.d.audit("prog_thaw", "vm", vm.name, "slot", vm.slot, "kernel_id", vm.prog.KernelID)
	return nil
}

// Frozen reports whether the VM's program is frozen (see Freeze).
func (vm *VM) Frozen() bool {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.frozen != nil
}

// StateMaps are the state maps of the VM's current program (see
// guestprog.Program.StateMaps), each a new handle the caller closes.
func (vm *VM) StateMaps() (map[string]*ebpf.Map, error) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	out := map[string]*ebpf.Map{}
	for name, m := range vm.prog.StateMaps() {
		c, err := m.Clone()
		if err != nil {
			for _, o := range out {
				o.Close()
			}
			return nil, fmt.Errorf("VM %s: map %s: %w", vm.name, name, err)
		}
		out[name] = c
	}
	return out, nil
}

// ResetProgram puts the built-in program back.
func (vm *VM) ResetProgram() error {
	obj, err := builtinProgram()
	if err != nil {
		return err
	}
	_, err = vm.SetProgram(obj, "built-in")
	return err
}

// Name is the VM's name.
func (vm *VM) Name() string { return vm.name }

// Slot is the VM's slot in the dispatcher.
func (vm *VM) Slot() int { return vm.slot }

// MAC is the VM's MAC address.
func (vm *VM) MAC() net.HardwareAddr { return vm.mac }

// Queues are the uplink queues dedicated to the VM.
func (vm *VM) Queues() []int { return slices.Clone(vm.queues) }

// Tap is the VM's tap device (nil while a TapExternal VM waits for it).
func (vm *VM) Tap() *Tap { return vm.tapView.Load() }

// Maps are the VM's host-owned maps (counters, delivery targets, ports).
func (vm *VM) Maps() *guestprog.HostMaps { return vm.maps }

// AddPort adds a device to the VM's port table as port number n. The
// program may then redirect to it; nothing else can. The loopback device
// and other VMs' taps are refused (see AddPortWith).
func (vm *VM) AddPort(n uint32, ifname string) error {
	return vm.AddPortWith(n, ifname, PortOptions{})
}

// AddPortWith is AddPort with options: another VM's tap is accepted with
// CrossVM (and logged as such).
func (vm *VM) AddPortWith(n uint32, ifname string, opts PortOptions) error {
	if n == UplinkPort || n >= MaxPorts {
		return fmt.Errorf("%w: VM %s: port %d: use 1-%d (port 0 is the uplink)", ErrInvalid, vm.name, n, MaxPorts-1)
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if p, ok := vm.ports[n]; ok {
		return fmt.Errorf("%w: VM %s: port %d is already %s", ErrExists, vm.name, n, p.Ifname)
	}
	l, err := vm.d.nl.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("VM %s: port %d: %w: %q in %s", vm.name, n, ErrNoSuchInterface, ifname, nsName(vm.d.cfg.NetNS))
	}
	into, err := vm.checkPortTarget(n, l, opts)
	if err != nil {
		return err
	}
	idx := l.Attrs().Index
	if err := vm.d.ns.Do(func() error { return vm.maps.PortTable.Put(n, uint32(idx)) }); err != nil {
		return fmt.Errorf("VM %s: add port %d (%s): %w", vm.name, n, ifname, err)
	}
	vm.ports[n] = Port{Number: n, Ifname: ifname, Ifindex: idx}
	if into != "" {
		vm.d.audit("port_add", "vm", vm.name, "port", n, "ifname", ifname, "ifindex", idx, "cross_vm", true, "into_vm", into)
		vm.d.log.Warn("a port leads into another VM: this VM's program can send straight into it", "vm", vm.name, "port", n, "ifname", ifname, "into_vm", into)
		return nil
	}
	vm.d.audit("port_add", "vm", vm.name, "port", n, "ifname", ifname, "ifindex", idx)
	return nil
}

// RemovePort removes port n from the VM's table; redirects to it fail from
// the next packet on.
func (vm *VM) RemovePort(n uint32) error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	p, ok := vm.ports[n]
	if !ok {
		return fmt.Errorf("%w: VM %s has no port %d", ErrNotFound, vm.name, n)
	}
	if n == UplinkPort {
		return fmt.Errorf("%w: VM %s: port 0 is the uplink and cannot be removed", ErrInvalid, vm.name)
	}
	if err := vm.maps.PortTable.Delete(n); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("VM %s: remove port %d: %w", vm.name, n, err)
	}
	delete(vm.ports, n)
	vm.d.audit("port_remove", "vm", vm.name, "port", n, "ifname", p.Ifname, "ifindex", p.Ifindex)
	return nil
}

// Ports lists the VM's port table.
func (vm *VM) Ports() []Port {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	out := make([]Port, 0, len(vm.ports))
	for _, p := range vm.ports {
		if owner := vm.d.tapOwner(p.Ifname); owner != vm.name && p.Number != UplinkPort {
			p.VM = owner
		}
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Number < out[j].Number })
	return out
}

// Verdicts are a VM's per-verdict counters, summed over CPUs. Every frame
// the VM's program saw is counted in exactly one of them.
type Verdicts struct {
	Aborted     Count `json:"aborted"`     // XDP_ABORTED: dropped
	Drop        Count `json:"drop"`        // dropped by the program
	Pass        Count `json:"pass"`        // delivered to the VM
	TX          Count `json:"tx"`          // sent back out of the uplink
	Redirect    Count `json:"redirect"`    // sent to a port of the VM's table
	Invalid     Count `json:"invalid"`     // unknown verdict, or XDP_REDIRECT naming no port: dropped
	Undelivered Count `json:"undelivered"` // passed, but no tap or socket took it
	Spoofed     Count `json:"spoofed"`     // TX or redirect to the uplink with a source MAC not the VM's: dropped
	NoPort      Count `json:"no_port"`     // redirect to a port not in the VM's table: dropped
}

// Verdicts reads the VM's verdict counters.
func (vm *VM) Verdicts() (Verdicts, error) {
	var v Verdicts
	for slot, dst := range map[hostbpf.VmprogHostdVerdict]*Count{
		hostbpf.VmprogHostdVerdictHOSTD_V_ABORTED:     &v.Aborted,
		hostbpf.VmprogHostdVerdictHOSTD_V_DROP:        &v.Drop,
		hostbpf.VmprogHostdVerdictHOSTD_V_PASS:        &v.Pass,
		hostbpf.VmprogHostdVerdictHOSTD_V_TX:          &v.TX,
		hostbpf.VmprogHostdVerdictHOSTD_V_REDIRECT:    &v.Redirect,
		hostbpf.VmprogHostdVerdictHOSTD_V_INVALID:     &v.Invalid,
		hostbpf.VmprogHostdVerdictHOSTD_V_UNDELIVERED: &v.Undelivered,
		hostbpf.VmprogHostdVerdictHOSTD_V_SPOOFED:     &v.Spoofed,
		hostbpf.VmprogHostdVerdictHOSTD_V_NO_PORT:     &v.NoPort,
	} {
		c, err := readCount(vm.maps.Counters, uint32(slot))
		if err != nil {
			return v, fmt.Errorf("VM %s: %w", vm.name, err)
		}
		*dst = c
	}
	return v, nil
}

// Cost is the measured run-time cost of the VM's program (one packet in 64
// timed), summed over CPUs since the VM was added.
func (vm *VM) Cost() (guestprog.Cost, error) {
	c, err := vm.maps.ReadCost()
	if err != nil {
		return c, fmt.Errorf("VM %s: %w", vm.name, err)
	}
	return c, nil
}

// TXStats are the counters of frames the VM sent into its tap.
type TXStats struct {
	// Redirected: handed to the uplink with an XDP redirect. That is not
	// "sent": the uplink's driver may still drop them, and a veth whose
	// peer has neither an XDP program nor GRO on drops them all without a
	// counter (RedirectProblem tells when).
	Redirected Count `json:"redirected"`
	Spoofed    Count `json:"spoofed"`   // source MAC not the VM's: dropped
	Invalid    Count `json:"invalid"`   // too short: dropped
	NoUplink   Count `json:"no_uplink"` // redirect failed: dropped
}

// TXStats reads the VM's transmit counters.
func (vm *VM) TXStats() (TXStats, error) {
	const vmtxMax = 5 // VMTX_MAX in bpf/vmtx.c
	var s TXStats
	for i, dst := range map[int]*Count{0: &s.Redirected, 1: &s.Spoofed, 2: &s.Invalid, 4: &s.NoUplink} {
		c, err := readCount(vm.d.vmtx.VmtxStats, uint32(vm.slot*vmtxMax+i))
		if err != nil {
			return s, fmt.Errorf("VM %s: %w", vm.name, err)
		}
		*dst = c
	}
	return s, nil
}

func (d *Dataplane) audit(event string, args ...any) {
	d.log.Info("audit: "+event, append([]any{"audit", event}, args...)...)
}

// Uplink is the name of the VM's uplink.
func (vm *VM) Uplink() string { return vm.d.cfg.Uplink }

// Delivery is how the VM's passed packets reach it.
func (vm *VM) Delivery() guestprog.Delivery { return vm.maps.Delivery }

// GuestMap returns a map of the VM's current program by name: the guest's
// own state (a bridge's table, a filter's prefixes).
func (vm *VM) GuestMap(name string) (*ebpf.Map, bool) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.prog.Map(name)
}
