package guestprog

import (
	"errors"
	"fmt"
	"strings"

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
			return nil, &VerifierError{Program: o.Entry, Log: trimLog(verr.Log), err: err}
		}
		return nil, fmt.Errorf("load program %q: %w", o.Entry, err)
	}
	p := &Program{Entry: coll.Programs[o.Entry], coll: coll}
	if info, err := p.Entry.Info(); err == nil {
		p.KernelID, _ = info.ID()
	}
	return p, nil
}

// Map returns one of the guest's own maps by name (the host's and the port
// table are not the guest's).
func (p *Program) Map(name string) (*ebpf.Map, bool) {
	if p == nil || p.coll == nil || strings.HasPrefix(name, ReservedPrefix) || name == PortTableMap {
		return nil, false
	}
	m, ok := p.coll.Maps[name]
	return m, ok
}

// ProgArrays are the guest's program arrays by name. The kernel empties a
// program array when no file descriptor or pin refers to it any more, so
// whoever wants the program to keep working without its loader pins them.
func (p *Program) ProgArrays() map[string]*ebpf.Map {
	out := map[string]*ebpf.Map{}
	if p == nil || p.coll == nil {
		return out
	}
	for name, m := range p.coll.Maps {
		if m.Type() == ebpf.ProgramArray {
			out[name] = m
		}
	}
	return out
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

// VerifierError is the kernel verifier's refusal, with the end of its log
// (where the reason is) for the submitter.
type VerifierError struct {
	Program string
	Log     []string
	err     error
}

func (e *VerifierError) Error() string {
	return fmt.Sprintf("the kernel verifier refused program %q:\n  %s", e.Program, strings.Join(e.Log, "\n  "))
}

func (e *VerifierError) Unwrap() error { return e.err }

// verifierLogLines is how much of the verifier's log goes back: its last
// lines say what failed and how it got there.
const verifierLogLines = 24

func trimLog(log []string) []string {
	var out []string
	for _, l := range log {
		if l = strings.TrimRight(l, " "); l != "" {
			out = append(out, l)
		}
	}
	if len(out) > verifierLogLines {
		out = append([]string{fmt.Sprintf("... (%d earlier lines)", len(out)-verifierLogLines)}, out[len(out)-verifierLogLines:]...)
	}
	return out
}

// VerifyInKernel loads the framed program against scratch maps, so that
// the kernel verifier runs, and unloads everything again.
func VerifyInKernel(o *Object) error {
	maps, err := NewHostMaps("chk", DeliverTap)
	if err != nil {
		return err
	}
	defer maps.Close()
	p, err := Load(o, maps)
	if err != nil {
		return err
	}
	return p.Close()
}
