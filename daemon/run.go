package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/vmport"
)

// Daemon holds the dataplanes of a running configuration and the registry
// of their guest programs. VMs can be added and removed while it runs.
type Daemon struct {
	log      *slog.Logger
	dps      []*hostnet.Dataplane
	netns    map[*hostnet.Dataplane]string
	mu       sync.Mutex // byVM, ports, agents
	byVM     map[string]*hostnet.VM
	ports    map[string]*vmport.Port
	agents   map[string]*agentServer
	Programs *Registry

	// Where VM sockets may be (see claimSocket): the allowed directories,
	// the API socket paths (resolved) and the sockets the previous daemon
	// served (resolved path -> VM, from the state).
	sockDirs    []string
	apiSockets  []string
	prevSockets map[string]string
	sockPerm    sockPerm // owner, group and mode of VM sockets

	// Durable state (nil store: none). smu guards the rest; it is taken
	// last (never held while taking mu or the registry's lock).
	store     *Store
	keep      bool // on stop, leave the dataplane forwarding on its pins
	smu       sync.Mutex
	restoring bool // Start is rebuilding from the state: write nothing yet
	entries   map[string]*vmEntry
	stNext    uint64
	stProgs   map[string]*StateProgram

	cfg      Config                  // as started (budgets)
	costMu   sync.Mutex              // costMean
	costMean map[*hostnet.VM]float64 // ns per packet over the last window
	// pending are VMs of a batch (AddVMs) not yet complete: the state
	// written leaves them out until the batch is, so that a daemon that
	// dies mid-way does not bring half a batch back.
	pending map[string]bool

	redirects redirectWarnings // devices that drop what a VM redirects into them
	// incoming are VMs an import registered that wait for their final
	// import (see migrate.go); they are pending too. migMu serializes
	// imports.
	incoming map[string]bool
	migMu    sync.Mutex
}

// vmEntry is how a VM was asked for, as the state records it.
type vmEntry struct {
	uplink string
	origin string // "config" or "api"
	cfg    VMConfig
}

// saveProgs is the registry's save: it records the programs and writes.
func (d *Daemon) saveProgs(next uint64, progs map[string]*StateProgram) error {
	d.smu.Lock()
	defer d.smu.Unlock()
	d.stNext, d.stProgs = next, progs
	return d.writeLocked()
}

// saveVMs changes the VM entries with f and writes the state; if the write
// fails the change is undone.
func (d *Daemon) saveVMs(f func(map[string]*vmEntry)) error {
	d.smu.Lock()
	defer d.smu.Unlock()
	old := make(map[string]*vmEntry, len(d.entries))
	for k, v := range d.entries {
		c := *v
		c.cfg.Ports = maps.Clone(v.cfg.Ports)
		c.cfg.CrossVMPorts = slices.Clone(v.cfg.CrossVMPorts)
		old[k] = &c
	}
	f(d.entries)
	if err := d.writeLocked(); err != nil {
		d.entries = old
		return err
	}
	return nil
}

func (d *Daemon) snapshotLocked() *State {
	st := &State{Version: StateVersion, NextID: d.stNext}
	names := make([]string, 0, len(d.entries))
	for n := range d.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if d.pending[n] {
			continue
		}
		e := d.entries[n]
		sv := StateVM{Uplink: e.uplink, Origin: e.origin, Config: e.cfg}
		if p := d.stProgs[n]; p != nil {
			c := *p
			sv.Program = &c
		}
		st.VMs = append(st.VMs, sv)
	}
	return st
}

func (d *Daemon) writeLocked() error {
	if d.store == nil || d.restoring {
		return nil
	}
	if err := d.store.Save(d.snapshotLocked()); err != nil {
		d.log.Error("cannot save the daemon's state: the change is undone", "dir", d.store.Dir(), "err", err)
		return fmt.Errorf("save state in %s: %w", d.store.Dir(), err)
	}
	return nil
}

// addVM sets a VM up on dp: dataplane, program registry, vhost-user port,
// extra ports, and records it in the state. On error nothing of it is left.
func (d *Daemon) addVM(dp *hostnet.Dataplane, netns string, vc VMConfig, origin string) (_ *hostnet.VM, err error) {
	if err := vc.validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	spec, _ := vc.spec()
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.byVM[vc.Name]; ok {
		return nil, fmt.Errorf("VM %s: %w", vc.Name, hostnet.ErrExists)
	}
	// The sockets are checked before anything is set up (d.mu keeps other
	// VMs from taking them meanwhile).
	var vhostPath, agentPath string
	if vc.Delivery == "vhost-user" {
		if vhostPath, err = d.claimSocket(vc.Name, "vhost_user_socket", vc.VhostUserSocket, origin); err != nil {
			return nil, err
		}
	}
	if vc.AgentSocket != "" {
		if agentPath, err = d.claimSocket(vc.Name, "agent_socket", vc.AgentSocket, origin); err != nil {
			return nil, err
		}
		if agentPath == vhostPath {
			return nil, fmt.Errorf("%w: agent_socket: %s is also the VM's vhost_user_socket; give each its own path", ErrConfig, vc.AgentSocket)
		}
	}
	vm, err := dp.AddVM(spec)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if p := d.ports[vc.Name]; p != nil {
				p.Close()
				delete(d.ports, vc.Name)
			}
			if a := d.agents[vc.Name]; a != nil {
				a.Close()
				delete(d.agents, vc.Name)
			}
			dp.RemoveVM(vc.Name)
		}
	}()
	if vc.Delivery == "vhost-user" {
		port, err := vmport.Open(vmport.Config{VM: vm, Socket: vhostPath, NetNS: netns, Log: d.log,
			BusyPoll: time.Duration(vc.BusyPollMicros) * time.Microsecond, Mode: vc.DeliveryMode})
		if err != nil {
			return nil, err
		}
		d.ports[vc.Name] = port
		if err := d.sockPerm.apply(vhostPath); err != nil {
			return nil, fmt.Errorf("VM %s: %w", vc.Name, err)
		}
	}
	if vc.AgentSocket != "" {
		if err := os.MkdirAll(filepath.Dir(agentPath), 0o755); err != nil {
			return nil, fmt.Errorf("VM %s: agent socket directory: %w", vc.Name, err)
		}
		a, err := d.serveAgent(vc.Name, agentPath)
		if err != nil {
			return nil, err
		}
		d.agents[vc.Name] = a
		if err := d.sockPerm.apply(agentPath); err != nil {
			return nil, fmt.Errorf("VM %s: %w", vc.Name, err)
		}
	}
	ports, err := vc.ports()
	if err != nil {
		return nil, fmt.Errorf("%w: ports: %w", ErrConfig, err)
	}
	sort.Slice(ports, func(a, b int) bool { return ports[a].n < ports[b].n })
	for _, p := range ports {
		if err := vm.AddPortWith(p.n, p.ifname, hostnet.PortOptions{CrossVM: slices.Contains(vc.CrossVMPorts, p.n)}); err != nil {
			return nil, err // it names the VM and the port
		}
	}
	if vm.Tap() != nil {
		vc.Tap = vm.Tap().Name()
	}
	vc.Ports = map[string]string{}
	for _, p := range ports {
		vc.Ports[strconv.FormatUint(uint64(p.n), 10)] = p.ifname
	}
	if err := d.saveVMs(func(m map[string]*vmEntry) {
		m[vc.Name] = &vmEntry{uplink: vm.Uplink(), origin: origin, cfg: vc}
	}); err != nil {
		return nil, err
	}
	d.byVM[vc.Name] = vm
	d.Programs.AddVM(vm)
	d.checkRedirects(netns, vm)
	return vm, nil
}

// AddVM adds a VM to a running daemon, on the named uplink.
func (d *Daemon) AddVM(uplink string, vc VMConfig) (*hostnet.VM, error) {
	for _, dp := range d.dps {
		if name, _, _ := dp.Uplink(); name == uplink {
			return d.addVM(dp, d.netns[dp], vc, "api")
		}
	}
	return nil, d.noSuchUplink(uplink)
}

// noSuchUplink is the error for a VM asked for on an uplink the daemon
// does not run: it names the uplink, the ones there are and how to add one.
func (d *Daemon) noSuchUplink(uplink string) error {
	var have []string
	for _, dp := range d.dps {
		name, _, _ := dp.Uplink()
		have = append(have, strconv.Quote(name))
	}
	return fmt.Errorf("%w: %q is not one of this daemon's uplinks (%s): give one of those as the VM's uplink, or add %q to \"uplinks\" in the daemon's configuration file and restart it",
		ErrNoSuchUplink, uplink, strings.Join(have, ", "), uplink)
}

// MaxBatch is the most VMs one AddVMs call adds.
const MaxBatch = 4 * hostnet.MaxVMs

// AddVMs adds several VMs as one: all of them, or none. It stops (and
// removes what it added) when ctx ends, the caller having given up:
// an API client whose deadline ran out mid-way leaves nothing behind.
func (d *Daemon) AddVMs(ctx context.Context, reqs []AddVMRequest) (_ []*hostnet.VM, err error) {
	if len(reqs) == 0 {
		return nil, fmt.Errorf("%w: vms: empty; give the VMs to add", errBadRequest)
	}
	if len(reqs) > MaxBatch {
		return nil, fmt.Errorf("%w: vms: %d VMs; at most %d at once", errBadRequest, len(reqs), MaxBatch)
	}
	seen := map[string]bool{}
	for i, r := range reqs {
		if r.Uplink == "" {
			return nil, fmt.Errorf("%w: vms[%d].uplink: required (the uplink the VM's traffic arrives on; see 'xdp-hostd status')", errBadRequest, i)
		}
		if seen[r.VM.Name] {
			return nil, fmt.Errorf("%w: vms[%d]: VM name %q given twice", errBadRequest, i, r.VM.Name)
		}
		seen[r.VM.Name] = true
	}
	d.smu.Lock()
	if d.pending == nil {
		d.pending = map[string]bool{}
	}
	var mine []string // a VM that exists, or another batch's, is not this one's
	for _, r := range reqs {
		if _, ok := d.entries[r.VM.Name]; !ok && !d.pending[r.VM.Name] {
			d.pending[r.VM.Name] = true
			mine = append(mine, r.VM.Name)
		}
	}
	d.smu.Unlock()
	var added []*hostnet.VM
	defer func() {
		d.smu.Lock()
		if err == nil {
			// Complete: the batch goes into the state in one write.
			for _, n := range mine {
				delete(d.pending, n)
			}
			err = d.writeLocked()
			if err != nil {
				for _, n := range mine {
					d.pending[n] = true
				}
			}
		}
		d.smu.Unlock()
		if err != nil {
			for i := len(added) - 1; i >= 0; i-- {
				if rerr := d.RemoveVM(added[i].Name()); rerr != nil && !errors.Is(rerr, ErrNoSuchVM) {
					d.log.Error("cannot undo a VM of a failed batch", "vm", added[i].Name(), "err", rerr)
				}
			}
			if len(added) > 0 {
				d.log.Warn("a batch of VMs failed: the VMs it added are removed", "audit", "vm_batch_undo", "removed", len(added), "err", err)
			}
			d.smu.Lock()
			for _, n := range mine {
				delete(d.pending, n)
			}
			d.smu.Unlock()
		}
	}()
	for i, r := range reqs {
		if err := context.Cause(ctx); err != nil {
			return nil, fmt.Errorf("vms[%d] (%s) and after not added: the caller gave up: %w", i, r.VM.Name, err)
		}
		vm, err := d.AddVM(r.Uplink, r.VM)
		if err != nil {
			return nil, fmt.Errorf("vms[%d] (%s): %w", i, r.VM.Name, err)
		}
		added = append(added, vm)
	}
	if err := context.Cause(ctx); err != nil {
		return nil, fmt.Errorf("the caller gave up: %w", err)
	}
	return added, nil
}

// RemoveVM stops a VM's port and removes it from the dataplane and the
// registry (its guest program goes with it).
func (d *Daemon) RemoveVM(name string) error { return d.removeVM(name, nil) }

// removeVM removes the VM if check (when given) accepts its record; both
// under d.mu, so that what is removed is what was checked.
func (d *Daemon) removeVM(name string, check func(VMConfig) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	vm, ok := d.byVM[name]
	if !ok {
		return fmt.Errorf("%w: %q", ErrNoSuchVM, name)
	}
	if check != nil {
		d.smu.Lock()
		var vc VMConfig
		if e := d.entries[name]; e != nil {
			vc = e.cfg
		}
		d.smu.Unlock()
		if err := check(vc); err != nil {
			return err
		}
	}
	var errs []error
	if p := d.ports[name]; p != nil {
		errs = append(errs, p.Close())
		delete(d.ports, name)
	}
	if a := d.agents[name]; a != nil {
		errs = append(errs, a.Close())
		delete(d.agents, name)
	}
	d.Programs.RemoveVM(name)
	for _, dp := range d.dps {
		if up, _, _ := dp.Uplink(); up == vm.Uplink() {
			errs = append(errs, dp.RemoveVM(name))
		}
	}
	delete(d.byVM, name)
	d.redirects.forget(vm)
	if err := d.saveVMs(func(m map[string]*vmEntry) { delete(m, name) }); err != nil {
		errs = append(errs, err)
	}
	d.smu.Lock()
	delete(d.stProgs, name)
	d.smu.Unlock()
	return errors.Join(errs...)
}

// AddPort adds a port to a VM's port table and records it. crossVM allows
// the port to be another VM's tap (recorded, so that a restart allows it
// again).
func (d *Daemon) AddPort(vmName string, n uint32, ifname string, crossVM bool) (*hostnet.VM, error) {
	vm, ok := d.VM(vmName)
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNoSuchVM, vmName)
	}
	if err := vm.AddPortWith(n, ifname, hostnet.PortOptions{CrossVM: crossVM}); err != nil {
		return nil, err
	}
	err := d.saveVMs(func(m map[string]*vmEntry) {
		if e := m[vmName]; e != nil {
			if e.cfg.Ports == nil {
				e.cfg.Ports = map[string]string{}
			}
			e.cfg.Ports[strconv.FormatUint(uint64(n), 10)] = ifname
			e.cfg.CrossVMPorts = slices.DeleteFunc(e.cfg.CrossVMPorts, func(p uint32) bool { return p == n })
			if crossVM {
				e.cfg.CrossVMPorts = append(e.cfg.CrossVMPorts, n)
			}
		}
	})
	if err != nil {
		vm.RemovePort(n)
		return nil, fmt.Errorf("port %d not added: %w", n, err)
	}
	d.checkRedirects(d.netnsOf(vm), vm)
	return vm, nil
}

// RemovePort removes a port from a VM's port table and records it.
func (d *Daemon) RemovePort(vmName string, n uint32) error {
	vm, ok := d.VM(vmName)
	if !ok {
		return fmt.Errorf("%w: %q", ErrNoSuchVM, vmName)
	}
	var ifname string
	var crossVM bool
	for _, p := range vm.Ports() {
		if p.Number == n {
			ifname, crossVM = p.Ifname, p.VM != ""
		}
	}
	if err := vm.RemovePort(n); err != nil {
		return err
	}
	err := d.saveVMs(func(m map[string]*vmEntry) {
		if e := m[vmName]; e != nil {
			delete(e.cfg.Ports, strconv.FormatUint(uint64(n), 10))
			e.cfg.CrossVMPorts = slices.DeleteFunc(e.cfg.CrossVMPorts, func(p uint32) bool { return p == n })
		}
	})
	if err != nil {
		if aerr := vm.AddPortWith(n, ifname, hostnet.PortOptions{CrossVM: crossVM}); aerr != nil {
			d.log.Error("cannot put a port back after a failed save", "vm", vmName, "port", n, "err", aerr)
		}
		return fmt.Errorf("port %d not removed: %w", n, err)
	}
	d.checkRedirects(d.netnsOf(vm), vm)
	return nil
}

// Start takes over every uplink of the configuration and sets up its VMs and
// ports. With a state directory, it restores the VMs, ports and programs
// the state holds (and adopts a dataplane left running on its pins, which
// keeps forwarding until the rebuilt one replaces it). On error, everything
// it did is undone before it returns (an adopted dataplane keeps running).
func Start(cfg *Config, log *slog.Logger) (_ *Daemon, err error) {
	if log == nil {
		log = slog.Default()
	}
	d := &Daemon{log: log, byVM: map[string]*hostnet.VM{}, ports: map[string]*vmport.Port{}, agents: map[string]*agentServer{},
		netns: map[*hostnet.Dataplane]string{}, Programs: NewRegistry(log, cfg.limits(), 1), cfg: *cfg, costMean: map[*hostnet.VM]float64{},
		entries: map[string]*vmEntry{}, stProgs: map[string]*StateProgram{}, prevSockets: map[string]string{}}
	d.sockDirs = cfg.SocketDirs()
	if d.sockPerm, err = cfg.socketPerm(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	for _, p := range []string{DefaultSocket, cfg.APISocket} {
		if p == "" {
			continue
		}
		if abs, err := filepath.Abs(p); err == nil {
			if r, err := resolveSocketPath(abs); err == nil {
				d.apiSockets = append(d.apiSockets, r)
			}
		}
	}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	st := &State{NextID: 1}
	if cfg.StateDir != "" {
		if d.store, err = OpenStore(cfg.StateDir); err != nil {
			return nil, err
		}
		if st, err = d.store.Load(); err != nil {
			return nil, err
		}
		d.keep = cfg.PinDir != ""
		d.Programs = NewRegistry(log, cfg.limits(), st.NextID)
		d.prevSockets = socketOwners(st)
		d.stNext = st.NextID
		// Restoring writes nothing until the whole state is back.
		d.restoring = true
	}
	for i, u := range cfg.Uplinks {
		mode := hostnet.AttachAuto
		if u.XDPMode != "" {
			mode, _ = hostnet.ParseAttachMode(u.XDPMode) // validated
		}
		dp, err := hostnet.Open(hostnet.Config{Uplink: u.Name, NetNS: u.NetNS, Mode: mode, Force: u.Force, PinDir: cfg.PinDir, Log: log})
		if err != nil {
			return nil, fmt.Errorf("uplinks[%d] (%s): %w", i, u.Name, err)
		}
		d.dps = append(d.dps, dp)
		d.netns[dp] = u.NetNS
		if err := d.restoreUplink(dp, i, u, st); err != nil {
			return nil, err
		}
		if err := dp.Activate(); err != nil {
			return nil, fmt.Errorf("uplinks[%d] (%s): %w", i, u.Name, err)
		}
	}
	if d.store != nil {
		d.smu.Lock()
		d.restoring = false
		d.smu.Unlock()
		d.Programs.mu.Lock()
		d.Programs.putObject = d.store.PutObject
		d.Programs.save = d.saveProgs
		err := d.Programs.persistLocked()
		d.Programs.mu.Unlock()
		if err != nil {
			return nil, err
		}
		d.smu.Lock()
		d.store.PruneObjects(d.snapshotLocked())
		d.smu.Unlock()
		for _, sv := range st.VMs {
			if !slices.ContainsFunc(cfg.Uplinks, func(u UplinkConfig) bool { return u.Name == sv.Uplink }) {
				d.log.Warn("dropping a VM whose uplink is no longer in the configuration", "audit", "vm_drop", "vm", sv.Config.Name, "uplink", sv.Uplink)
			}
		}
	}
	return d, nil
}

// restoreUplink sets up an uplink's VMs: those of the configuration (with
// the ports the state recorded for them, if any) and those added through
// the API that the state holds, then their programs.
func (d *Daemon) restoreUplink(dp *hostnet.Dataplane, i int, u UplinkConfig, st *State) error {
	type want struct {
		vc     VMConfig
		origin string
		prog   *StateProgram
		at     string
	}
	var wants []want
	for j, vc := range u.VMs {
		w := want{vc: vc, origin: "config", at: fmt.Sprintf("uplinks[%d].vms[%d]", i, j)}
		if sv := st.vm(vc.Name); sv != nil && sv.Uplink == u.Name {
			w.vc.Ports, w.prog = sv.Config.Ports, sv.Program
			if vc.Tap == "" && sv.Config.Tap != "" && vc.Delivery != "vhost-user" {
				w.vc.Tap = sv.Config.Tap
			}
		}
		wants = append(wants, w)
	}
	for _, sv := range st.VMs {
		if sv.Uplink != u.Name || sv.Origin != "api" || slices.ContainsFunc(u.VMs, func(vc VMConfig) bool { return vc.Name == sv.Config.Name }) {
			continue
		}
		wants = append(wants, want{vc: sv.Config, origin: "api", prog: sv.Program})
	}
	for _, w := range wants {
		if _, err := d.addVM(dp, u.NetNS, w.vc, w.origin); err != nil {
			if w.origin == "config" {
				return fmt.Errorf("%s: %w", w.at, err)
			}
			d.log.Error("cannot restore a VM from the state: dropping it", "audit", "vm_drop", "vm", w.vc.Name, "uplink", u.Name, "err", err)
			continue
		}
		if w.prog == nil {
			continue
		}
		obj, err := d.store.Object(w.prog.SHA256)
		if err == nil {
			err = d.Programs.restore(w.vc.Name, w.prog, obj)
		}
		if err != nil {
			// Never the built-in pass-everything program in its place.
			if err := d.Programs.restoreLost(w.vc.Name, w.prog, err); err != nil {
				return fmt.Errorf("uplink %s: %w", u.Name, err)
			}
		}
	}
	return nil
}

// Dataplanes are the running uplinks.
func (d *Daemon) Dataplanes() []*hostnet.Dataplane { return d.dps }

// Close tears every uplink down.
func (d *Daemon) Close() error {
	var errs []error
	d.mu.Lock()
	for _, a := range d.agents {
		errs = append(errs, a.Close())
	}
	d.agents = map[string]*agentServer{}
	for _, p := range d.ports {
		errs = append(errs, p.Close())
	}
	d.ports = map[string]*vmport.Port{}
	d.mu.Unlock()
	for i := len(d.dps) - 1; i >= 0; i-- {
		if d.keep {
			errs = append(errs, d.dps[i].Release())
		} else {
			errs = append(errs, d.dps[i].Close())
		}
	}
	d.dps = nil
	errs = append(errs, d.store.Close())
	return errors.Join(errs...)
}

// VM returns a VM by name.
func (d *Daemon) VM(name string) (*hostnet.VM, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	vm, ok := d.byVM[name]
	return vm, ok
}

// RunOptions configure Run.
type RunOptions struct {
	// Socket is the path of the API's unix socket; default DefaultSocket.
	Socket string
	// SocketGroup, if set, owns the socket (mode 0660).
	SocketGroup string
	// Metrics, if set, is a loopback address where Prometheus metrics are
	// served (GET /metrics). Off by default.
	Metrics string
}

// Run starts the configuration and its API, logs "ready" and serves until
// ctx ends, then tears everything down. What can fail outside the
// dataplane (the API socket in use, a bad metrics address) fails before
// any uplink is touched: a dataplane left running on its pins keeps
// running as it was.
func Run(ctx context.Context, cfg *Config, opts RunOptions, log *slog.Logger) (err error) {
	if cfg.APISocket == "" {
		cfg.APISocket = opts.Socket // no VM may take it
	}
	if log == nil {
		log = slog.Default()
	}
	if os.Geteuid() != 0 && len(cfg.Uplinks) > 0 {
		return fmt.Errorf("%w: attaching XDP programs needs root (CAP_NET_ADMIN and CAP_BPF): run xdp-hostd as root", hostnet.ErrNotRoot)
	}
	api, err := ListenAPI(opts.Socket, opts.SocketGroup)
	if err != nil {
		return err
	}
	var m *Metrics
	closeListeners := func() {
		if m != nil {
			m.Close()
		}
		api.Close()
	}
	if opts.Metrics != "" {
		if m, err = ListenMetrics(opts.Metrics); err != nil {
			api.Close()
			return err
		}
	}
	d, err := Start(cfg, log)
	if err != nil {
		closeListeners()
		return err
	}
	// The API goes first: no request reaches a daemon being torn down.
	defer func() {
		closeListeners()
		err = errors.Join(err, d.Close())
	}()
	api.Serve(d)
	if m != nil {
		m.Serve(d)
		d.log.Info("serving metrics", "addr", "http://"+m.Addr()+"/metrics")
	}
	n := 0
	for _, dp := range d.dps {
		n += len(dp.VMs())
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go d.watchCost(watchCtx)
	d.log.Info("ready", "uplinks", len(d.dps), "vms", n, "api", api.Path())
	<-ctx.Done()
	d.log.Info("stopping", "reason", context.Cause(ctx))
	return nil
}
