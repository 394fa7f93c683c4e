package guestprog

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// Program is a VM program loaded into the kernel: the framed entry and the
// guest's own programs and maps. It is not yet running anywhere: the caller
// puts Entry into the VM's slot of the dispatcher's program array.
type Program struct {
	Entry    *ebpf.Program
	KernelID ebpf.ProgramID
	coll     *ebpf.Collection
}

// Load frames the object's entry program, binds it to the VM's host maps and
// loads everything into the kernel. The kernel verifier's complaint, if any,
// comes back in the error.
func Load(o *Object, maps *HostMaps) (_ *Program, err error) {
	spec, err := o.Framed(maps.Delivery)
	if err != nil {
		return nil, err
	}
	repl := map[string]*ebpf.Map{
		mapCounters: maps.Counters,
		mapTap:      maps.Tap,
		mapXSKs:     maps.XSKs,
	}
	if _, ok := spec.Maps[PortTableMap]; ok {
		repl[PortTableMap] = maps.PortTable
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("kernel verifier refused program %q: %w", o.Entry, err)
		}
		return nil, fmt.Errorf("load program %q: %w", o.Entry, err)
	}
	p := &Program{Entry: coll.Programs[o.Entry], coll: coll}
	if info, err := p.Entry.Info(); err == nil {
		p.KernelID, _ = info.ID()
	}
	return p, nil
}

// Close releases the program and the guest's own maps. Once the program is
// no longer in a program array, the kernel frees it.
func (p *Program) Close() error {
	if p == nil || p.coll == nil {
		return nil
	}
	p.coll.Close()
	p.coll = nil
	return nil
}
