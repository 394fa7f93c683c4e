package guestprog

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Program is a VM program loaded into the kernel: the framed entry and the
// guest's own programs and maps. It is not yet running anywhere: the caller
// puts Entry into the VM's slot of the dispatcher's program array.
type Program struct {
	Entry    *ebpf.Program
	KernelID ebpf.ProgramID
	coll     *ebpf.Collection
	adopted  bool // Entry was found in the kernel, not loaded from an object
}

// Adopted wraps a VM program that an earlier process loaded and left
// running, found by its kernel ID: the host has its entry, not its object.
// It has none of the guest's maps (they stay with the program in the
// kernel); Close releases the handle on Entry.
func Adopted(entry *ebpf.Program, id ebpf.ProgramID) *Program {
	return &Program{Entry: entry, KernelID: id, adopted: true}
}

// Load frames the object's entry program, binds it to the VM's host maps and
// loads everything into the kernel. The kernel verifier's complaint, if any,
// comes back in the error.
func Load(o *Object, maps *HostMaps) (_ *Program, err error) {
	p, _, err := LoadKeeping(o, maps, nil)
	return p, err
}

// LoadKeeping is Load with some of the guest's maps given rather than
// created: keep holds maps by name from an earlier load of the same object
// (see StateMaps), so that what the program had stored survives. A kept
// map that the object does not declare, or declares differently (type,
// key, value, size, flags), is not used: the program gets a fresh one,
// and its name is in skipped with the reason.
func LoadKeeping(o *Object, maps *HostMaps, keep map[string]*ebpf.Map) (_ *Program, skipped map[string]error, err error) {
	spec, err := o.Framed(maps.Delivery)
	if err != nil {
		return nil, nil, err
	}
	repl := maps.replacements()
	for name, m := range keep {
		ms, ok := spec.Maps[name]
		switch {
		case !ok:
			err = errors.New("the program declares no such map")
		case !isStateMap(name, ms.Type):
			err = errors.New("not a map whose contents are kept")
		default:
			ms = ms.Copy()
			if (strings.HasPrefix(name, ".data") || strings.HasPrefix(name, ".bss")) && m.Flags()&unix.BPF_F_MMAPABLE != 0 {
				ms.Flags |= unix.BPF_F_MMAPABLE // what the loader adds where the kernel can
			}
			err = ms.Compatible(m)
		}
		if err != nil {
			if skipped == nil {
				skipped = map[string]error{}
			}
			skipped[name] = err
			continue
		}
		repl[name] = m
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, skipped, &VerifierError{Program: o.Entry, Log: trimLog(verr.Log), err: err}
		}
		return nil, skipped, fmt.Errorf("load program %q: %w", o.Entry, err)
	}
	if err := checkKernelQuota(coll, o.Limits.withDefaults()); err != nil {
		coll.Close()
		return nil, skipped, fmt.Errorf("load program %q: %w", o.Entry, err)
	}
	if err := checkLoadedCost(o, coll.Programs); err != nil {
		coll.Close()
		return nil, skipped, err
	}
	p := &Program{Entry: coll.Programs[o.Entry], coll: coll}
	if info, err := p.Entry.Info(); err == nil {
		p.KernelID, _ = info.ID()
	}
	return p, skipped, nil
}

// isStateMap reports whether a guest map holds state worth keeping across
// a reload of the same program: its own data maps and global variables,
// not program arrays (they hold the old load's programs), read-only data
// or the host's maps.
func isStateMap(name string, typ ebpf.MapType) bool {
	switch {
	case strings.HasPrefix(name, ReservedPrefix), name == PortTableMap:
		return false
	case typ == ebpf.ProgramArray:
		return false
	case strings.HasPrefix(name, ".rodata"), name == ".kconfig":
		return false
	}
	return true
}

// StateMaps are the guest's maps whose contents LoadKeeping can hand to a
// later load of the same object (data maps, .data and .bss), by name.
func (p *Program) StateMaps() map[string]*ebpf.Map {
	out := map[string]*ebpf.Map{}
	if p == nil || p.coll == nil {
		return out
	}
	for name, m := range p.coll.Maps {
		if isStateMap(name, m.Type()) {
			out[name] = m
		}
	}
	return out
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
	if p != nil && p.adopted && p.Entry != nil {
		err := p.Entry.Close()
		p.Entry = nil
		return err
	}
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
	maps, err := NewHostMaps("chk", DeliverTap, net.HardwareAddr{2, 0, 0, 0, 0, 1})
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

// IsStateMap reports whether the guest map name of type typ holds state a
// later load can be given (see StateMaps): what a migration carries.
func IsStateMap(name string, typ ebpf.MapType) bool { return isStateMap(name, typ) }
