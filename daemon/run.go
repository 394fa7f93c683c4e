package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/xdp-hostd/xdp-hostd/guestprog"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/vmport"
)

// Daemon holds the dataplanes of a running configuration and the registry
// of their guest programs. VMs can be added and removed while it runs.
type Daemon struct {
	log      *slog.Logger
	dps      []*hostnet.Dataplane
	netns    map[*hostnet.Dataplane]string
	mu       sync.Mutex // byVM, ports
	byVM     map[string]*hostnet.VM
	ports    map[string]*vmport.Port
	Programs *Registry
}

// addVM sets a VM up on dp: dataplane, program registry, vhost-user port,
// extra ports. On error nothing of it is left.
func (d *Daemon) addVM(dp *hostnet.Dataplane, netns string, vc VMConfig) (_ *hostnet.VM, err error) {
	if err := vc.validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	spec, _ := vc.spec()
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.byVM[vc.Name]; ok {
		return nil, fmt.Errorf("VM %s: %w", vc.Name, hostnet.ErrExists)
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
			dp.RemoveVM(vc.Name)
		}
	}()
	if vc.Delivery == "vhost-user" {
		port, err := vmport.Open(vmport.Config{VM: vm, Socket: vc.VhostUserSocket, NetNS: netns, Log: d.log,
			BusyPoll: time.Duration(vc.BusyPollMicros) * time.Microsecond})
		if err != nil {
			return nil, err
		}
		d.ports[vc.Name] = port
	}
	ports, err := vc.ports()
	if err != nil {
		return nil, fmt.Errorf("%w: ports: %w", ErrConfig, err)
	}
	sort.Slice(ports, func(a, b int) bool { return ports[a].n < ports[b].n })
	for _, p := range ports {
		if err := vm.AddPort(p.n, p.ifname); err != nil {
			return nil, fmt.Errorf("ports: %w", err)
		}
	}
	d.byVM[vc.Name] = vm
	d.Programs.AddVM(vm)
	return vm, nil
}

// AddVM adds a VM to a running daemon, on the named uplink.
func (d *Daemon) AddVM(uplink string, vc VMConfig) (*hostnet.VM, error) {
	for _, dp := range d.dps {
		if name, _, _ := dp.Uplink(); name == uplink {
			return d.addVM(dp, d.netns[dp], vc)
		}
	}
	return nil, fmt.Errorf("%w: no uplink %q in this daemon (see 'xdp-hostd status')", ErrNoSuchVM, uplink)
}

// RemoveVM stops a VM's port and removes it from the dataplane and the
// registry (its guest program goes with it).
func (d *Daemon) RemoveVM(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	vm, ok := d.byVM[name]
	if !ok {
		return fmt.Errorf("%w: %q", ErrNoSuchVM, name)
	}
	var errs []error
	if p := d.ports[name]; p != nil {
		errs = append(errs, p.Close())
		delete(d.ports, name)
	}
	d.Programs.RemoveVM(name)
	for _, dp := range d.dps {
		if up, _, _ := dp.Uplink(); up == vm.Uplink() {
			errs = append(errs, dp.RemoveVM(name))
		}
	}
	delete(d.byVM, name)
	return errors.Join(errs...)
}

// Start takes over every uplink of the configuration and sets up its VMs and
// ports. On error, everything it did is undone before it returns.
func Start(cfg *Config, log *slog.Logger) (_ *Daemon, err error) {
	if log == nil {
		log = slog.Default()
	}
	d := &Daemon{log: log, byVM: map[string]*hostnet.VM{}, ports: map[string]*vmport.Port{},
		netns: map[*hostnet.Dataplane]string{}, Programs: NewRegistry(log, guestprog.Limits{}, 1)}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
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
		for j, vc := range u.VMs {
			if _, err := d.addVM(dp, u.NetNS, vc); err != nil {
				return nil, fmt.Errorf("uplinks[%d].vms[%d]: %w", i, j, err)
			}
		}
	}
	return d, nil
}

// Dataplanes are the running uplinks.
func (d *Daemon) Dataplanes() []*hostnet.Dataplane { return d.dps }

// Close tears every uplink down.
func (d *Daemon) Close() error {
	var errs []error
	d.mu.Lock()
	for _, p := range d.ports {
		errs = append(errs, p.Close())
	}
	d.ports = map[string]*vmport.Port{}
	d.mu.Unlock()
	for i := len(d.dps) - 1; i >= 0; i-- {
		errs = append(errs, d.dps[i].Close())
	}
	d.dps = nil
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
// ctx ends, then tears everything down.
func Run(ctx context.Context, cfg *Config, opts RunOptions, log *slog.Logger) (err error) {
	d, err := Start(cfg, log)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, d.Close()) }()
	api, err := ServeAPI(d, opts.Socket, opts.SocketGroup)
	if err != nil {
		return err
	}
	defer api.Close()
	if opts.Metrics != "" {
		m, err := ServeMetrics(d, opts.Metrics)
		if err != nil {
			return err
		}
		defer m.Close()
		d.log.Info("serving metrics", "addr", "http://"+m.Addr()+"/metrics")
	}
	n := 0
	for _, dp := range d.dps {
		n += len(dp.VMs())
	}
	d.log.Info("ready", "uplinks", len(d.dps), "vms", n, "api", api.Path())
	<-ctx.Done()
	d.log.Info("stopping", "reason", context.Cause(ctx))
	return nil
}
