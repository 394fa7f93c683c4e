package guestprog

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"

	hostbpf "github.com/xdp-hostd/xdp-hostd/bpf"
)

// Names of the host's frame in bpf/vmprog.c.
const (
	framePlaceholder = "hostd_guest_entry"
	// ReservedPrefix starts every symbol and map name the host uses in a VM
	// program; guest objects may not use it.
	ReservedPrefix = "hostd_"
	// PortTableMap is the name under which version 1 of the guest ABI
	// declared the port table. Version 2 objects have no such map: the host
	// issues every redirect (bpf/include/xdp_hostd.h).
	PortTableMap = "port_table"
)

// Host-owned per-VM map names, bound by the loader.
const (
	mapCounters = "hostd_counters"
	mapTap      = "hostd_tap"
	mapXSKs     = "hostd_xsks"
	mapPorts    = "hostd_ports"
	mapVM       = "hostd_vm"
	mapCost     = "hostd_cost"
)

// hostMapNames are the frame's per-VM maps, in HostMaps order.
var hostMapNames = []string{mapCounters, mapTap, mapXSKs, mapPorts, mapVM, mapCost}

// ErrInvalidObject is wrapped by errors about input that is not a usable
// BPF ELF object at all.
var ErrInvalidObject = errors.New("invalid guest program object")

// ErrRefused is wrapped by *RefusedError.
var ErrRefused = errors.New("refused by the host's policy")

// RefusedError carries the report of a program the static policy refused.
type RefusedError struct{ Report *Report }

func (e *RefusedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v (%d violations)", ErrRefused, len(e.Report.Violations))
	for _, v := range e.Report.Violations {
		b.WriteString("\n  ")
		b.WriteString(v.String())
	}
	return b.String()
}

func (e *RefusedError) Unwrap() error { return ErrRefused }

// Delivery is how a VM's passed packets reach it.
type Delivery int

const (
	// DeliverTap copies into the VM's tap (bpf_redirect_map to a devmap).
	DeliverTap Delivery = iota
	// DeliverXSK hands packets to the VM's AF_XDP socket on the RX queue.
	DeliverXSK
)

func (d Delivery) String() string {
	switch d {
	case DeliverTap:
		return "tap"
	case DeliverXSK:
		return "xsk"
	}
	return fmt.Sprintf("Delivery(%d)", int(d))
}

// frame is the host frame program for the delivery mode (bpf/vmprog.c).
func (d Delivery) frame() string { return "hostd_vm_" + d.String() }

// HostMaps are the maps the host owns for one VM and binds into every program
// that VM runs, and the VM's delivery mode. They outlive any one program, so
// replacing the program keeps the verdict counters and the delivery targets.
type HostMaps struct {
	Delivery  Delivery
	Counters  *ebpf.Map // per-CPU packets/bytes per verdict
	Tap       *ebpf.Map // DEVMAP: key 0 -> the VM's tap
	XSKs      *ebpf.Map // XSKMAP: RX queue -> the VM's AF_XDP socket
	PortTable *ebpf.Map // DEVMAP_HASH: the VM's port table
	VM        *ebpf.Map // ARRAY: key 0 -> the VM's identity (its MAC)
	Cost      *ebpf.Map // per-CPU: run-time cost of the VM's program, sampled
}

// NewHostMaps creates the per-VM maps for a VM whose frames carry source MAC
// mac. name (at most a few characters, e.g. the VM slot) is appended to the
// kernel map names so that bpftool tells the VMs apart.
func NewHostMaps(name string, delivery Delivery, mac net.HardwareAddr) (_ *HostMaps, err error) {
	if len(mac) != 6 {
		return nil, fmt.Errorf("host maps for VM %s: MAC %q is not 6 bytes", name, mac)
	}
	spec, err := hostbpf.LoadVmprog()
	if err != nil {
		return nil, fmt.Errorf("load host frame spec: %w", err)
	}
	h := &HostMaps{Delivery: delivery}
	defer func() {
		if err != nil {
			h.Close()
		}
	}()
	for _, m := range []struct {
		dst  **ebpf.Map
		spec string
		abbr string
	}{
		{&h.Counters, mapCounters, "cnt"},
		{&h.Tap, mapTap, "tap"},
		{&h.XSKs, mapXSKs, "xsk"},
		{&h.PortTable, mapPorts, "ports"},
		{&h.VM, mapVM, "id"},
		{&h.Cost, mapCost, "cost"},
	} {
		ms := spec.Maps[m.spec].Copy()
		ms.Name = kernelName("vm" + name + "_" + m.abbr)
		if *m.dst, err = ebpf.NewMap(ms); err != nil {
			return nil, fmt.Errorf("create %s map for VM %s: %w", m.spec, name, err)
		}
	}
	var id hostbpf.VmprogHostdVmCfg
	copy(id.Mac.Addr[:], mac)
	if err := h.VM.Put(uint32(0), &id); err != nil {
		return nil, fmt.Errorf("VM %s: set its MAC in the frame: %w", name, err)
	}
	return h, nil
}

// kernelName trims a name to what the kernel keeps (15 bytes).
func kernelName(s string) string {
	if len(s) > 15 {
		s = s[:15]
	}
	return s
}

// Close releases the host's handles on the maps. Programs still using them
// keep them alive in the kernel.
func (h *HostMaps) Close() error {
	var errs []error
	for _, m := range h.all() {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
}

// all lists the maps in hostMapNames order.
func (h *HostMaps) all() []*ebpf.Map {
	return []*ebpf.Map{h.Counters, h.Tap, h.XSKs, h.PortTable, h.VM, h.Cost}
}

// replacements binds the frame's map names to this VM's maps.
func (h *HostMaps) replacements() map[string]*ebpf.Map {
	out := map[string]*ebpf.Map{}
	for i, m := range h.all() {
		out[hostMapNames[i]] = m
	}
	return out
}

// Cost is the run-time cost of a VM's program, summed over CPUs: every
// packet through the frame is counted, one in 64 is timed.
type Cost struct {
	Runs    uint64 `json:"runs"`
	Sampled uint64 `json:"sampled"`
	NS      uint64 `json:"ns"` // guest time of the sampled packets
}

// NSPerPacket is the mean time the VM's program took per timed packet (0
// before any was timed).
func (c Cost) NSPerPacket() float64 {
	if c.Sampled == 0 {
		return 0
	}
	return float64(c.NS) / float64(c.Sampled)
}

// Sub is c minus an earlier reading.
func (c Cost) Sub(old Cost) Cost {
	return Cost{Runs: c.Runs - old.Runs, Sampled: c.Sampled - old.Sampled, NS: c.NS - old.NS}
}

// ReadCost reads the VM's cost counters.
func (h *HostMaps) ReadCost() (Cost, error) {
	var per []hostbpf.VmprogHostdRunCost
	if err := h.Cost.Lookup(uint32(0), &per); err != nil {
		return Cost{}, fmt.Errorf("read cost counters: %w", err)
	}
	var c Cost
	for _, p := range per {
		c.Runs += p.Runs
		c.Sampled += p.Sampled
		c.NS += p.Ns
	}
	return c, nil
}

// Object is a parsed guest program object, not yet loaded.
type Object struct {
	Spec  *ebpf.CollectionSpec
	Entry string // name of the entry program in Spec.Programs
	// cost is the static cost analysis and the budget; the load checks
	// the kernel's figure against it. Zero for objects not from Check.
	cost CostReport
	// Limits the object was checked against; the loader holds the
	// kernel's figures to Limits.Memory.
	Limits Limits
}

// Parse runs the static policy with the default limits on obj and returns it
// ready to load; a refused program gives a *RefusedError. entry names the
// entry program when the object has several that nothing tail-calls into.
func Parse(obj []byte, entry string) (*Object, error) {
	r, o, err := Check(obj, entry, Limits{})
	if err != nil {
		return nil, err
	}
	if !r.Accepted {
		return nil, &RefusedError{Report: r}
	}
	return o, nil
}

// parseSpec reads the ELF object. It never panics, whatever the input.
func parseSpec(obj []byte) (spec *ebpf.CollectionSpec, err error) {
	defer func() {
		if r := recover(); r != nil {
			spec, err = nil, fmt.Errorf("%w: the ELF parser failed on this input: %v", ErrInvalidObject, r)
		}
	}()
	spec, err = ebpf.LoadCollectionSpecFromReader(bytes.NewReader(obj))
	if err != nil {
		return nil, fmt.Errorf("%w: %w (want an ELF object from clang -O2 -g -target bpf)", ErrInvalidObject, err)
	}
	return spec, nil
}

// findEntry picks the one XDP program that no program array of the object
// lists: the others are tail-call targets.
func findEntry(spec *ebpf.CollectionSpec) (string, error) {
	targets := map[string]bool{}
	for _, m := range spec.Maps {
		if m.Type != ebpf.ProgramArray {
			continue
		}
		for _, kv := range m.Contents {
			if name, ok := kv.Value.(string); ok {
				targets[name] = true
			}
		}
	}
	var cands []string
	for _, name := range programNames(spec) {
		if !targets[name] {
			cands = append(cands, name)
		}
	}
	switch len(cands) {
	case 1:
		return cands[0], nil
	case 0:
		if all := programNames(spec); len(all) == 1 {
			return all[0], nil // the policy then refuses the array that lists it
		} else if len(all) > 1 {
			return "", fmt.Errorf("every program (%s) is listed in a program array; name the entry program", strings.Join(all, ", "))
		}
		return "", errors.New("the object has no XDP program (declare one with SEC(\"xdp\"))")
	default:
		return "", fmt.Errorf("the object has %d entry programs (%s); name the one to run", len(cands), strings.Join(cands, ", "))
	}
}

func programNames(spec *ebpf.CollectionSpec) []string {
	var names []string
	for name := range spec.Programs {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// Framed returns a copy of the object's collection in which the entry program
// is the host frame for the delivery mode: it calls the guest's entry function as a
// bpf-to-bpf subprogram and hands whatever it returns to the host epilogue.
// The host's per-VM maps are added to the collection, ready to be replaced by
// a VM's instances.
//
// Why a call and not rewritten exits: a subprogram returns to its caller from
// every exit instruction, and a program it tail-calls into from its own
// program array returns to the caller of that subprogram too, so the epilogue
// sees every verdict without touching a single guest instruction or jump
// offset. The guest's code is left exactly as its owner compiled it.
func (o *Object) Framed(delivery Delivery) (*ebpf.CollectionSpec, error) {
	host, err := hostbpf.LoadVmprog()
	if err != nil {
		return nil, fmt.Errorf("load host frame spec: %w", err)
	}
	frame := host.Programs[delivery.frame()]
	if frame == nil {
		return nil, fmt.Errorf("host frame program %s missing from bpf/vmprog.c", delivery.frame())
	}

	spec := o.Spec.Copy()
	guest := spec.Programs[o.Entry]

	insns, err := relink(frame.Instructions, guest.Instructions)
	if err != nil {
		return nil, err
	}

	framed := guest.Copy()
	framed.Instructions = insns
	framed.Name = o.Entry
	spec.Programs[o.Entry] = framed

	for _, name := range hostMapNames {
		spec.Maps[name] = host.Maps[name].Copy()
	}
	// A version 1 object declares port_table; the policy has made sure
	// nothing uses it, so it is not created.
	delete(spec.Maps, PortTableMap)
	return spec, nil
}

// relink builds the instructions of the framed program: the frame's own
// functions without the placeholder, then the guest's entry function as a
// static subprogram, then the guest's subprograms.
func relink(frame, guest asm.Instructions) (asm.Instructions, error) {
	if len(guest) == 0 {
		return nil, fmt.Errorf("%w: the entry program is empty", ErrInvalidObject)
	}
	entrySym := guest[0].Symbol()
	if entrySym == "" {
		return nil, fmt.Errorf("%w: the entry program has no symbol", ErrInvalidObject)
	}

	out := make(asm.Instructions, 0, len(frame)+len(guest))
	inPlaceholder, calls := false, 0
	for _, ins := range frame {
		if sym := ins.Symbol(); sym != "" {
			inPlaceholder = sym == framePlaceholder
		}
		if inPlaceholder {
			continue
		}
		if ins.IsFunctionCall() && ins.Reference() == framePlaceholder {
			ins = ins.WithReference(entrySym)
			calls++
		}
		out = append(out, ins)
	}
	// The compiler may duplicate the call into both arms of a branch (the
	// frame times one packet in 64); each path still calls the guest once.
	if calls == 0 {
		return nil, fmt.Errorf("host frame: no call to %s", framePlaceholder)
	}

	first := guest[0]
	if fn := btf.FuncMetadata(&first); fn != nil {
		// A static function is verified in its caller's context, so the
		// verifier knows r1 is the XDP context, exactly as for the guest's
		// own program.
		static := *fn
		static.Linkage = btf.StaticFunc
		first = btf.WithFuncMetadata(first, &static)
	}
	out = append(out, first)
	out = append(out, guest[1:]...)
	return out, nil
}
