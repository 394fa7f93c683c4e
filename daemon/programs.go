package daemon

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/xdp-hostd/xdp-hostd/guestprog"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/migration"
)

// Errors of the program registry; API errors map them to status codes.
var (
	ErrNoSuchVM = errors.New("no such VM")
	// ErrNoSuchUplink: a VM was asked for on an uplink the daemon does not
	// run (a 404, like ErrNoSuchVM, but about the uplink).
	ErrNoSuchUplink  = errors.New("no such uplink")
	ErrNoSuchProgram = errors.New("no such program")
	// ErrStale: the caller's expected program ID is not the VM's current
	// one. Nothing was changed.
	ErrStale = errors.New("the expected program is not the current one")
	// ErrHasProgram: load on a VM that already runs a guest program.
	ErrHasProgram = errors.New("the VM already runs a guest program")
)

// MaxObjectSize is the largest guest object accepted.
const MaxObjectSize = 4 << 20

// ProgramRecord is one accepted guest program.
type ProgramRecord struct {
	ID       uint64    `json:"id"`        // daemon-wide, never reused
	SHA256   string    `json:"sha256"`    // of the submitted object
	KernelID uint32    `json:"kernel_id"` // the kernel's ID of the framed program
	VM       string    `json:"vm"`
	Uplink   string    `json:"uplink"`
	Queues   []int     `json:"queues"`
	Entry    string    `json:"entry"`
	Size     int       `json:"size"`
	LoadedAt time.Time `json:"loaded_at"`
	// Verdicts are the VM's counters when the record was read; they count
	// across program replacements.
	Verdicts *hostnet.Verdicts `json:"verdicts,omitempty"`
	// Problem, when set, says why the VM does not run this program as
	// loaded: after a restart its stored object could not be used, and
	// either the copy the previous daemon left running was kept, or the
	// VM fails closed (drops every frame). Loading the program again
	// (replace with this ID as expect) clears it.
	Problem string `json:"problem,omitempty"`
	// History are the IDs the program had on other daemons before it came
	// here with its VM (live migration), oldest first: the daemon's ID
	// above is this daemon's own.
	History []migration.Origin `json:"history,omitempty"`
}

// Registry gives guest programs their identity (IDs, hashes) and applies
// load, replace and remove with compare-and-swap semantics: replace and
// remove name the program the caller believes is current.
type Registry struct {
	log    *slog.Logger
	limits guestprog.Limits

	counters programCounters

	mu     sync.Mutex
	nextID uint64
	vms    map[string]*hostnet.VM
	byVM   map[string]*ProgramRecord
	parsed map[string]*guestprog.Object // each VM's current guest program, for rollback
	objs   map[string][]byte            // each VM's current guest object as submitted, for export

	// persist, if set, makes the registry durable: putObject stores an
	// object before it is installed; save writes the next ID and the
	// programs after every change (the change is rolled back if it fails).
	putObject func(obj []byte) (string, error)
	save      func(next uint64, progs map[string]*StateProgram) error
}

// NewRegistry makes a registry over the daemon's VMs. IDs start at next.
func NewRegistry(log *slog.Logger, limits guestprog.Limits, next uint64) *Registry {
	if next == 0 {
		next = 1
	}
	return &Registry{log: log, limits: limits, nextID: next, vms: map[string]*hostnet.VM{}, byVM: map[string]*ProgramRecord{}, parsed: map[string]*guestprog.Object{}, objs: map[string][]byte{}}
}

// persistLocked saves the registry's state; the caller holds r.mu.
func (r *Registry) persistLocked() error {
	if r.save == nil {
		return nil
	}
	progs := make(map[string]*StateProgram, len(r.byVM))
	for name, rec := range r.byVM {
		progs[name] = &StateProgram{ID: rec.ID, SHA256: rec.SHA256, Entry: rec.Entry, Size: rec.Size, LoadedAt: rec.LoadedAt, History: rec.History}
	}
	return r.save(r.nextID, progs)
}

// rollbackLocked puts a VM's previous program back after a change that
// could not be saved; the caller holds r.mu. A previous program the
// registry has no object of (kept running or failed closed after a
// restart) cannot be loaded again: the VM fails closed.
func (r *Registry) rollbackLocked(vm *hostnet.VM, prev *ProgramRecord, prevObj *guestprog.Object, prevRaw []byte) {
	name := vm.Name()
	if prevRaw != nil {
		r.objs[name] = prevRaw
	} else {
		delete(r.objs, name)
	}
	var err error
	if prev != nil && prevObj == nil {
		var kid uint32
		if kid, err = vm.FailClosed(); err == nil {
			c := *prev
			c.KernelID = kid
			c.Problem = fmt.Sprintf("fail closed: program %d could not be put back after a failed save and the VM drops every frame; load it again with expect %d", prev.ID, prev.ID)
			r.byVM[name] = &c
			delete(r.parsed, name)
		}
	} else if prev != nil {
		var kid uint32
		if kid, err = vm.SetGuestProgram(prevObj, "guest", prev.ID); err == nil {
			c := *prev
			c.KernelID = kid
			r.byVM[name], r.parsed[name] = &c, prevObj
		}
	} else {
		err = vm.ResetProgram()
		delete(r.byVM, name)
		delete(r.parsed, name)
	}
	if err != nil {
		r.log.Error("cannot put the previous program back after a failed save", "vm", name, "err", err)
	}
}

// AddVM makes a VM known to the registry.
func (r *Registry) AddVM(vm *hostnet.VM) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.vms[vm.Name()] = vm
}

// RemoveVM forgets a VM and its program record.
func (r *Registry) RemoveVM(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rec, ok := r.byVM[name]; ok {
		r.log.Info("audit: prog_remove", "audit", "prog_remove", "vm", name, "id", rec.ID, "reason", "VM removed")
	}
	delete(r.vms, name)
	delete(r.byVM, name)
	delete(r.parsed, name)
	delete(r.objs, name)
}

// restore reinstalls a program the state names, with its ID, on a VM the
// daemon set up again at start.
func (r *Registry) restore(vmName string, p *StateProgram, obj []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	vm, err := r.vm(vmName)
	if err != nil {
		return err
	}
	report, parsed, err := r.Verify(obj, p.Entry)
	if err != nil {
		return err
	}
	if !report.Accepted {
		return &guestprog.RefusedError{Report: report}
	}
	// With pins, the program gets back the maps the previous daemon
	// pinned under its ID: what it stored survives the restart.
	kid, err := vm.SetGuestProgram(parsed, "guest", p.ID)
	if err != nil {
		return err
	}
	r.byVM[vmName] = &ProgramRecord{
		ID: p.ID, SHA256: p.SHA256, KernelID: kid, VM: vmName, Uplink: vm.Uplink(), Queues: vm.Queues(),
		Entry: parsed.Entry, Size: len(obj), LoadedAt: p.LoadedAt, History: p.History,
	}
	r.parsed[vmName] = parsed
	r.objs[vmName] = obj
	if p.ID >= r.nextID {
		r.nextID = p.ID + 1
	}
	r.log.Info("audit: prog_restore", "audit", "prog_restore", "vm", vmName, "id", p.ID, "sha256", p.SHA256, "kernel_id", kid)
	return nil
}

// restoreLost stands in for a program the state names but that cannot be
// loaded again (cause: its object is missing or damaged, or refused now):
// the copy a previous daemon left running on the pins is kept if there is
// one; otherwise the VM fails closed, dropping every frame. Either way
// the program keeps its ID and record, with a Problem saying so, until it
// is replaced or removed. A DDoS filter never silently turns into a
// pass-everything program.
func (r *Registry) restoreLost(vmName string, p *StateProgram, cause error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	vm, err := r.vm(vmName)
	if err != nil {
		return err
	}
	rec := &ProgramRecord{ID: p.ID, SHA256: p.SHA256, VM: vmName, Uplink: vm.Uplink(), Queues: vm.Queues(),
		Entry: p.Entry, Size: p.Size, LoadedAt: p.LoadedAt, History: p.History}
	kid, aerr := vm.AdoptPinnedProgram(p.ID)
	if aerr == nil {
		rec.Problem = fmt.Sprintf("its stored object could not be used (%v); the copy the previous daemon left running on the pins is kept; load the program again (replace, expect %d) so that a restart without pins can restore it", cause, p.ID)
		r.log.Warn("a VM's program cannot be restored from the state: keeping the copy left running on the pins", "audit", "prog_adopt", "vm", vmName, "id", p.ID, "kernel_id", kid, "cause", cause)
	} else {
		if kid, err = vm.FailClosed(); err != nil {
			return fmt.Errorf("VM %s: program %d cannot be restored (%w) and the VM cannot fail closed: %w", vmName, p.ID, cause, err)
		}
		rec.Problem = fmt.Sprintf("fail closed: its stored object could not be used (%v) and no running copy was pinned (%v); the VM drops every frame until the program is loaded again (replace, expect %d) or removed (expect %d)", cause, aerr, p.ID, p.ID)
		r.log.Error("a VM's program cannot be restored from the state and none was left running: the VM fails closed (drops every frame)", "audit", "prog_fail_closed", "vm", vmName, "id", p.ID, "cause", cause, "pins", aerr)
	}
	rec.KernelID = kid
	r.byVM[vmName] = rec
	delete(r.parsed, vmName)
	delete(r.objs, vmName)
	if p.ID >= r.nextID {
		r.nextID = p.ID + 1
	}
	return nil
}

// Problem is what is wrong with a VM's program ("" if nothing): see
// ProgramRecord.Problem.
func (r *Registry) Problem(vmName string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rec, ok := r.byVM[vmName]; ok {
		return rec.Problem
	}
	return ""
}

func (r *Registry) vm(name string) (*hostnet.VM, error) {
	vm, ok := r.vms[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNoSuchVM, name)
	}
	return vm, nil
}

// Verify runs the static policy with the registry's limits.
func (r *Registry) Verify(obj []byte, entry string) (*guestprog.Report, *guestprog.Object, error) {
	if len(obj) > MaxObjectSize {
		return nil, nil, fmt.Errorf("%w: the object has %d bytes; the limit is %d", guestprog.ErrInvalidObject, len(obj), MaxObjectSize)
	}
	return guestprog.Check(obj, entry, r.limits)
}

// Load installs a guest program on a VM that runs the built-in one.
func (r *Registry) Load(vmName string, obj []byte, entry string) (*ProgramRecord, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	vm, err := r.vm(vmName)
	if err != nil {
		return nil, err
	}
	if cur, ok := r.byVM[vmName]; ok {
		return nil, fmt.Errorf("%w: VM %s runs program %d; replace it with --expect %d", ErrHasProgram, vmName, cur.ID, cur.ID)
	}
	return r.install(vm, 0, obj, entry)
}

// Replace swaps the VM's program for a new one if expect is its current
// program's ID.
func (r *Registry) Replace(vmName string, expect uint64, obj []byte, entry string) (*ProgramRecord, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	vm, err := r.vm(vmName)
	if err != nil {
		return nil, err
	}
	if err := r.checkCurrent(vmName, expect); err != nil {
		return nil, err
	}
	return r.install(vm, expect, obj, entry)
}

// Remove puts the built-in program back if expect is the VM's current
// program's ID.
func (r *Registry) Remove(vmName string, expect uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	vm, err := r.vm(vmName)
	if err != nil {
		return err
	}
	if err := r.checkCurrent(vmName, expect); err != nil {
		return err
	}
	if err := vm.ResetProgram(); err != nil {
		return fmt.Errorf("remove program %d from VM %s: %w", expect, vmName, err)
	}
	prev, prevObj, prevRaw := r.byVM[vmName], r.parsed[vmName], r.objs[vmName]
	delete(r.byVM, vmName)
	delete(r.parsed, vmName)
	delete(r.objs, vmName)
	if err := r.persistLocked(); err != nil {
		r.rollbackLocked(vm, prev, prevObj, prevRaw)
		return fmt.Errorf("program %d not removed: %w", expect, err)
	}
	r.log.Info("audit: prog_remove", "audit", "prog_remove", "vm", vmName, "id", expect)
	return nil
}

func (r *Registry) checkCurrent(vmName string, expect uint64) error {
	cur, ok := r.byVM[vmName]
	switch {
	case !ok:
		return fmt.Errorf("%w: VM %s runs the built-in program, not %d; load one first", ErrStale, vmName, expect)
	case cur.ID != expect:
		return fmt.Errorf("%w: VM %s runs program %d, not %d; nothing was changed", ErrStale, vmName, cur.ID, expect)
	}
	return nil
}

// install checks, loads and swaps in a program; the caller holds r.mu. On
// error the VM keeps its current program and no ID is used up.
func (r *Registry) install(vm *hostnet.VM, replaces uint64, obj []byte, entry string) (*ProgramRecord, error) {
	return r.installWith(vm, replaces, obj, entry, nil, nil)
}

// installWith is install with the program's state maps given (filled by
// the caller, see hostnet.VM.SetGuestProgramWith) and the IDs the program
// had on other daemons; the caller holds r.mu.
func (r *Registry) installWith(vm *hostnet.VM, replaces uint64, obj []byte, entry string, maps map[string]*ebpf.Map, history []migration.Origin) (*ProgramRecord, error) {
	report, parsed, err := r.Verify(obj, entry)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(obj)
	if !report.Accepted {
		for _, v := range report.Violations {
			r.counters.reject(string(v.Rule))
		}
		r.log.Info("audit: prog_refused", "audit", "prog_refused", "vm", vm.Name(), "sha256", hex.EncodeToString(sum[:]), "violations", len(report.Violations))
		return nil, &guestprog.RefusedError{Report: report}
	}
	if r.putObject != nil {
		if _, err := r.putObject(obj); err != nil {
			return nil, err
		}
	}
	kid, err := vm.SetGuestProgramWith(parsed, "guest", r.nextID, maps)
	if err != nil {
		r.counters.reject("verifier")
		r.log.Info("audit: prog_refused", "audit", "prog_refused", "vm", vm.Name(), "sha256", hex.EncodeToString(sum[:]), "reason", "kernel verifier")
		return nil, err
	}
	rec := &ProgramRecord{
		ID: r.nextID, SHA256: hex.EncodeToString(sum[:]), KernelID: kid,
		VM: vm.Name(), Uplink: vm.Uplink(), Queues: vm.Queues(), Entry: parsed.Entry, Size: len(obj),
		LoadedAt: time.Now().UTC(), History: history,
	}
	prev, prevObj, prevRaw := r.byVM[vm.Name()], r.parsed[vm.Name()], r.objs[vm.Name()]
	r.nextID++
	r.byVM[vm.Name()], r.parsed[vm.Name()], r.objs[vm.Name()] = rec, parsed, obj
	if err := r.persistLocked(); err != nil {
		r.nextID--
		r.rollbackLocked(vm, prev, prevObj, prevRaw)
		return nil, fmt.Errorf("program not installed: %w", err)
	}
	r.counters.load()
	event := "prog_load"
	switch {
	case len(history) > 0:
		event = "prog_import"
	case replaces != 0:
		event = "prog_replace"
	}
	r.log.Info("audit: "+event, "audit", event, "vm", rec.VM, "id", rec.ID, "replaces", replaces, "sha256", rec.SHA256, "kernel_id", kid, "entry", rec.Entry)
	return rec, nil
}

// List returns every VM's current guest program with its verdict counters.
func (r *Registry) List() []ProgramRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]ProgramRecord, 0, len(r.byVM))
	for name, rec := range r.byVM {
		c := *rec
		if v, err := r.vms[name].Verdicts(); err == nil {
			c.Verdicts = &v
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Show returns one program by ID.
func (r *Registry) Show(id uint64) (ProgramRecord, error) {
	for _, rec := range r.List() {
		if rec.ID == id {
			return rec, nil
		}
	}
	return ProgramRecord{}, fmt.Errorf("%w: %d is not a current program (list them with 'xdp-hostd prog list')", ErrNoSuchProgram, id)
}

// Current returns the ID of a VM's guest program, 0 if it runs the built-in one.
func (r *Registry) Current(vmName string) (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, err := r.vm(vmName); err != nil {
		return 0, err
	}
	if rec, ok := r.byVM[vmName]; ok {
		return rec.ID, nil
	}
	return 0, nil
}

// NextID is the ID the next accepted program gets.
func (r *Registry) NextID() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nextID
}
