package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/guestprog"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/migration"
)

// Live migration of a VM's registration, program and map contents between
// two daemons (see the README's "Live migration"). The source exports a
// migration.Document (Export; a final one freezes the program first); the
// destination imports it in two stages: prepare registers the VM closed
// (dropping every frame) and checks the program and maps against this
// host's policy and kernel without attaching anything; final loads the
// program with the document's map contents and only then attaches it.
// Abort on the destination removes what an import set up; Thaw on the
// source puts a frozen program back.

// ErrNotMigratable: the VM cannot be exported as it is (its program has no
// object here, or it is frozen for another export).
var ErrNotMigratable = errors.New("the VM cannot be exported")

// Export is the VM's migration document. A final export freezes the VM's
// program first (hostnet.VM.Freeze: it drops the VM's frames and no longer
// writes its maps), so that the maps hold everything it wrote; the VM
// stays frozen until Thaw (the migration failed) or its removal (it
// succeeded). If a final export fails, the program is thawed again.
func (d *Daemon) Export(name string, final bool) (*migration.Document, error) {
	vm, ok := d.VM(name)
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNoSuchVM, name)
	}
	d.smu.Lock()
	e := d.entries[name]
	var cfg VMConfig
	if e != nil {
		cfg = e.cfg
	}
	incoming := d.incoming[name]
	d.smu.Unlock()
	if incoming {
		return nil, fmt.Errorf("%w: VM %s is still arriving by migration here (its final import has not run)", ErrNotMigratable, name)
	}
	doc := migration.New()
	doc.Final = final
	doc.Host, _ = os.Hostname()
	doc.VM = migration.VM{Name: name, UUID: cfg.UUID, MAC: vm.MAC().String(), Delivery: cfg.Delivery, Uplink: vm.Uplink(),
		Queues: vm.Queues(), TapQueues: cfg.TapQueues, BusyPollMicros: cfg.BusyPollMicros}
	if vm.Delivery() == guestprog.DeliverXSK {
		doc.VM.Delivery = "vhost-user"
	}
	for _, p := range vm.Ports() {
		if p.Number != hostnet.UplinkPort {
			doc.VM.Ports = append(doc.VM.Ports, migration.Port{Port: p.Number, Ifname: p.Ifname, CrossVM: slices.Contains(cfg.CrossVMPorts, p.Number)})
		}
	}
	var err error
	if doc.Program, doc.Maps, err = d.Programs.export(name, final); err != nil {
		return nil, err
	}
	d.log.Info("audit: vm_export", "audit", "vm_export", "vm", name, "final", final, "maps", len(doc.Maps))
	return doc, nil
}

// export reads a VM's program and the contents of its state maps, frozen
// first if final (thawed again if the export fails).
func (r *Registry) export(vmName string, final bool) (_ *migration.Program, _ []migration.Map, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	vm, err := r.vm(vmName)
	if err != nil {
		return nil, nil, err
	}
	rec, ok := r.byVM[vmName]
	if !ok {
		return nil, nil, nil // the built-in program: nothing to carry
	}
	obj := r.objs[vmName]
	if obj == nil {
		return nil, nil, fmt.Errorf("%w: VM %s's program %d has no object on this daemon (%s): load it again (prog replace --expect %d) before migrating", ErrNotMigratable, vmName, rec.ID, rec.Problem, rec.ID)
	}
	if final {
		if vm.Frozen() {
			return nil, nil, fmt.Errorf("%w: VM %s is already frozen by a final export: finish that migration, or thaw it ('xdp-hostd migrate --abort')", ErrNotMigratable, vmName)
		}
		if err := vm.Freeze(); err != nil {
			vm.Thaw()
			return nil, nil, err
		}
		defer func() {
			if err != nil {
				if terr := vm.Thaw(); terr != nil {
					r.log.Error("a failed final export cannot thaw the VM's program", "vm", vmName, "err", terr)
				}
			}
		}()
	}
	maps, err := vm.StateMaps()
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		for _, m := range maps {
			m.Close()
		}
	}()
	names := make([]string, 0, len(maps))
	for n := range maps {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []migration.Map
	for _, n := range names {
		c, err := migration.Read(n, maps[n])
		if err != nil {
			return nil, nil, fmt.Errorf("VM %s: %w", vmName, err)
		}
		out = append(out, c)
	}
	p := &migration.Program{ID: rec.ID, SHA256: rec.SHA256, Entry: rec.Entry, LoadedAt: rec.LoadedAt, Object: obj, History: slices.Clone(rec.History)}
	return p, out, nil
}

// Thaw puts a VM's program back after a final export (the migration
// failed): the source VM runs on with its program and maps.
func (d *Daemon) Thaw(name string) error {
	vm, ok := d.VM(name)
	if !ok {
		return fmt.Errorf("%w: %q", ErrNoSuchVM, name)
	}
	if err := vm.Thaw(); err != nil {
		return err
	}
	d.log.Info("audit: vm_thaw", "audit", "vm_thaw", "vm", name)
	return nil
}

// ImportRequest is the body of POST /v1/migrations.
type ImportRequest struct {
	// Document is what the source's export gave (migration.Document).
	Document json.RawMessage `json:"document"`
	// Final loads the program with the document's map contents and
	// attaches it. Without it (prepare) the VM is registered closed, if
	// it is not registered yet, and the program and maps are checked
	// against this host's policy and kernel; nothing is attached.
	Final bool `json:"final,omitempty"`
	// This host's side of the registration; empty: the document's uplink
	// and queues, the default tap, no sockets.
	Uplink string `json:"uplink,omitempty"`
	Queues []int  `json:"queues,omitempty"`
	Tap    string `json:"tap,omitempty"`
	// TapMode is who opens the tap ("", "qemu", "external": as VMConfig).
	TapMode         string `json:"tap_mode,omitempty"`
	VhostUserSocket string `json:"vhost_user_socket,omitempty"`
	AgentSocket     string `json:"agent_socket,omitempty"`
}

// ImportResult is the answer to an import.
type ImportResult struct {
	VM VMStatus `json:"vm"`
	// Program is the program's record here (final imports): a new ID of
	// this daemon, with the source's ID in its history.
	Program *ProgramRecord `json:"program,omitempty"`
	// Incoming: the VM waits for its final import (it drops every frame
	// until then); Abort removes it.
	Incoming bool `json:"incoming"`
	// Maps and Entries count what was written (final) or checked (prepare).
	Maps    int `json:"maps"`
	Entries int `json:"entries"`
}

// MaxImportBody is the largest import request.
const MaxImportBody = migration.MaxSize + 4096

// Import sets a VM up from a migration document (see ImportRequest). On
// error nothing of the import is left: a VM it registered is removed, an
// already registered VM keeps its program.
func (d *Daemon) Import(ctx context.Context, req ImportRequest) (_ *ImportResult, err error) {
	doc, err := migration.Decode(req.Document)
	if err != nil {
		return nil, err
	}
	name := doc.VM.Name
	vc := VMConfig{Name: name, UUID: doc.VM.UUID, MAC: doc.VM.MAC, Delivery: doc.VM.Delivery, Queues: doc.VM.Queues,
		TapQueues: doc.VM.TapQueues, BusyPollMicros: doc.VM.BusyPollMicros, Tap: req.Tap, TapMode: req.TapMode,
		VhostUserSocket: req.VhostUserSocket, AgentSocket: req.AgentSocket}
	if req.Queues != nil {
		vc.Queues = req.Queues
	}
	for _, p := range doc.VM.Ports {
		if vc.Ports == nil {
			vc.Ports = map[string]string{}
		}
		vc.Ports[strconv.FormatUint(uint64(p.Port), 10)] = p.Ifname
		if p.CrossVM {
			vc.CrossVMPorts = append(vc.CrossVMPorts, p.Port)
		}
	}
	uplink := doc.VM.Uplink
	if req.Uplink != "" {
		uplink = req.Uplink
	}
	d.migMu.Lock()
	defer d.migMu.Unlock()

	vm, exists := d.VM(name)
	d.smu.Lock()
	incoming := d.incoming[name]
	d.smu.Unlock()
	if exists {
		if mac, _ := net.ParseMAC(doc.VM.MAC); mac.String() != vm.MAC().String() {
			return nil, fmt.Errorf("%w: VM %s is registered here with MAC %s, the export has %s: remove it first ('xdp-hostd vm rm %s') or import the right VM", ErrConfig, name, vm.MAC(), doc.VM.MAC, name)
		}
	} else {
		vc.closed = true
		d.smu.Lock()
		if d.pending == nil {
			d.pending = map[string]bool{}
		}
		if d.incoming == nil {
			d.incoming = map[string]bool{}
		}
		d.pending[name], d.incoming[name] = true, true // left out of the state until the final import
		d.smu.Unlock()
		if vm, err = d.AddVM(uplink, vc); err != nil {
			d.dropIncoming(name)
			return nil, fmt.Errorf("register VM %s: %w", name, err)
		}
		incoming = true
		d.log.Info("audit: vm_incoming", "audit", "vm_incoming", "vm", name, "uplink", uplink, "from", doc.Host)
	}
	defer func() {
		// A failed import leaves nothing: the VM it registered goes (a
		// failed final import of a prepared VM too: the migration failed).
		if err != nil && incoming {
			if rerr := d.abortIncoming(name); rerr != nil {
				d.log.Error("cannot remove the VM of a failed import", "vm", name, "err", rerr)
			}
		}
	}()
	res := &ImportResult{Incoming: incoming}
	if p := doc.Program; p != nil {
		report, parsed, err := d.Programs.Verify(p.Object, p.Entry)
		if err != nil {
			return nil, fmt.Errorf("VM %s: program %d of %s: %w", name, p.ID, doc.Host, err)
		}
		if !report.Accepted {
			return nil, &guestprog.RefusedError{Report: report}
		}
		maps, err := filledMaps(parsed, doc.Maps)
		if err != nil {
			return nil, fmt.Errorf("VM %s: %w", name, err)
		}
		defer func() {
			for _, m := range maps {
				m.Close()
			}
		}()
		for _, m := range doc.Maps {
			res.Maps++
			res.Entries += len(m.Entries)
		}
		if !req.Final {
			if err := dryLoad(parsed, vm, maps); err != nil {
				return nil, fmt.Errorf("VM %s: %w", name, err)
			}
		} else {
			history := append(slices.Clone(p.History), migration.Origin{Host: doc.Host, ID: p.ID, SHA256: p.SHA256, LoadedAt: p.LoadedAt, MigratedAt: doc.ExportedAt})
			if res.Program, err = d.Programs.ImportProgram(name, p.Object, p.Entry, maps, history); err != nil {
				return nil, err
			}
		}
	} else if req.Final {
		if cur, _ := d.Programs.Current(name); cur != 0 {
			if err := d.Programs.Remove(name, cur); err != nil {
				return nil, err
			}
		} else if incoming {
			if err := vm.ResetProgram(); err != nil {
				return nil, err
			}
		}
	}
	if req.Final && incoming {
		d.smu.Lock()
		delete(d.pending, name)
		err = d.writeLocked()
		if err == nil {
			delete(d.incoming, name)
		}
		d.smu.Unlock()
		if err != nil {
			return nil, err
		}
		res.Incoming = false
	}
	res.VM = d.vmStatus(vm)
	d.log.Info("audit: vm_import", "audit", "vm_import", "vm", name, "final", req.Final, "from", doc.Host, "maps", res.Maps, "entries", res.Entries)
	return res, nil
}

// ImportProgram installs a program that arrived with its VM, whatever
// the VM runs now, with its state maps given (filled), under a new ID of
// this daemon; history are its IDs on other daemons.
func (r *Registry) ImportProgram(vmName string, obj []byte, entry string, maps map[string]*ebpf.Map, history []migration.Origin) (*ProgramRecord, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	vm, err := r.vm(vmName)
	if err != nil {
		return nil, err
	}
	var replaces uint64
	if cur, ok := r.byVM[vmName]; ok {
		replaces = cur.ID
	}
	if maps == nil {
		maps = map[string]*ebpf.Map{}
	}
	return r.installWith(vm, replaces, obj, entry, maps, history)
}

// filledMaps creates the object's state maps the document carries and
// writes their contents. The caller closes them.
func filledMaps(o *guestprog.Object, contents []migration.Map) (_ map[string]*ebpf.Map, err error) {
	out := map[string]*ebpf.Map{}
	defer func() {
		if err != nil {
			for _, m := range out {
				m.Close()
			}
		}
	}()
	for _, c := range contents {
		spec, ok := o.Spec.Maps[c.Name]
		if !ok || !guestprog.IsStateMap(c.Name, spec.Type) {
			return nil, fmt.Errorf("%w: map %s: the program declares no such map whose contents move with it", migration.ErrDocument, c.Name)
		}
		ms := spec.Copy()
		if strings.HasPrefix(c.Name, ".data") || strings.HasPrefix(c.Name, ".bss") {
			// What the loader does with global variables where the kernel
			// can: a replacement must match it.
			ms.Flags |= unix.BPF_F_MMAPABLE
		}
		m, err := ebpf.NewMap(ms)
		if err != nil && ms.Flags != spec.Flags {
			m, err = ebpf.NewMap(spec.Copy())
		}
		if err != nil {
			return nil, fmt.Errorf("map %s: create: %w", c.Name, err)
		}
		out[c.Name] = m
		if err := migration.Write(c, spec, m); err != nil {
			return nil, fmt.Errorf("%w: %w", migration.ErrDocument, err)
		}
	}
	return out, nil
}

// dryLoad loads the program with the filled maps against scratch host maps
// (the kernel verifier, the kernel's charge against the memory quota) and
// unloads it again: a prepare finds what a final import would refuse.
func dryLoad(o *guestprog.Object, vm *hostnet.VM, maps map[string]*ebpf.Map) error {
	hm, err := guestprog.NewHostMaps("mig", vm.Delivery(), vm.MAC())
	if err != nil {
		return err
	}
	defer hm.Close()
	p, skipped, err := guestprog.LoadKeeping(o, hm, maps)
	if err != nil {
		return err
	}
	defer p.Close()
	for name, why := range skipped {
		return fmt.Errorf("%w: map %s: %w", migration.ErrDocument, name, why)
	}
	return nil
}

// AbortImport removes a VM an import registered and that has not had its
// final import. A VM registered otherwise is left alone (an error); no
// such VM is nothing to undo.
func (d *Daemon) AbortImport(name string) error {
	d.migMu.Lock()
	defer d.migMu.Unlock()
	d.smu.Lock()
	incoming := d.incoming[name]
	d.smu.Unlock()
	if !incoming {
		if _, ok := d.VM(name); ok {
			return fmt.Errorf("%w: VM %s was not registered by an unfinished import here: nothing removed (remove it with 'xdp-hostd vm rm %s' if you mean to)", ErrStale, name, name)
		}
		return nil
	}
	return d.abortIncoming(name)
}

func (d *Daemon) abortIncoming(name string) error {
	err := d.RemoveVM(name)
	if errors.Is(err, ErrNoSuchVM) {
		err = nil
	}
	d.dropIncoming(name)
	d.log.Info("audit: vm_import_abort", "audit", "vm_import_abort", "vm", name, "err", err)
	return err
}

func (d *Daemon) dropIncoming(name string) {
	d.smu.Lock()
	delete(d.pending, name)
	delete(d.incoming, name)
	d.smu.Unlock()
}

// Incoming reports whether a VM is still arriving by migration.
func (d *Daemon) Incoming(name string) bool {
	d.smu.Lock()
	defer d.smu.Unlock()
	return d.incoming[name]
}
