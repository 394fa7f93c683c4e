package libvirthook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/migration"
)

// Live migration with libvirt (`virsh migrate --live`). libvirt runs the
// hook on the destination with "migrate begin" (the incoming domain XML on
// stdin) and then "prepare", "start" and "started" as for a start; on the
// source it runs no hook when the migration starts, and "stopped end" and
// "release end" once the domain has left (after the destination's QEMU
// has resumed it); a migration that fails runs "stopped"/"release" on the
// destination instead, and nothing on the source. libvirt tells a hook
// neither the other host nor (before libvirt 10.5) why a domain stopped, so
// the hook finds the other side among the daemons it is given as peers
// (--peer: the API sockets of the other hosts' daemons, forwarded here):
//
//   - migrate begin (destination): the peer that runs the domain's VMs (same
//     domain UUID and MAC, not incoming) is the source; the hook exports
//     them there (nothing changes on the source) and imports them here
//     closed (incoming: they drop every frame), checked against this
//     host's policy with their program and maps. A refusal fails the hook,
//     and libvirt cancels the migration: the source runs on untouched.
//   - prepare (destination): VMs already incoming with the domain's UUID
//     and MAC are not registered again.
//   - stopped end (source): for each VM of the domain that a peer has
//     incoming, the final step: freeze the program here, carry its maps,
//     start it on the peer, remove it here. Only then does the VM's traffic
//     flow on the destination.
//   - release end: removes the domain's VMs here; incoming ones (the
//     migration failed on the destination) are aborted, leaving nothing.

// MigrationAPI is what the migration operations need of a daemon's client
// (this host's or a peer's).
type MigrationAPI interface {
	API
	Export(ctx context.Context, vm string, final bool) (json.RawMessage, *migration.Document, error)
	Import(ctx context.Context, req daemon.ImportRequest) (*daemon.ImportResult, error)
	AbortImport(ctx context.Context, vm string) error
	Thaw(ctx context.Context, vm string) error
	RemoveVM(ctx context.Context, name string) error
}

// Peer is another host's daemon, reachable from here.
type Peer struct {
	Name string // for messages: the socket's path
	API  MigrationAPI
}

// Options configure the hook beyond the local daemon.
type Options struct {
	// Peers are the daemons of the hosts domains migrate from and to.
	Peers []Peer
	// Uplinks maps an uplink named in domain metadata to this host's
	// uplink of another name (hosts whose NICs are named differently).
	Uplinks map[string]string
}

// RunWith is Run with migration peers and uplink names (see Options):
// besides Run's operations, "migrate" and "stopped" (see above).
func RunWith(ctx context.Context, api API, opts Options, op, subop string, domainXML io.Reader, logf func(string, ...any)) error {
	switch op {
	case "migrate":
		mapi, ok := api.(MigrationAPI)
		if !ok {
			return errors.New("the daemon's client cannot migrate")
		}
		return migrateBegin(ctx, mapi, opts, domainXML, logf)
	case "stopped":
		mapi, ok := api.(MigrationAPI)
		if !ok || len(opts.Peers) == 0 {
			return nil
		}
		stopped(ctx, mapi, opts, domainXML, logf)
		return nil
	}
	return run(ctx, api, opts, op, subop, domainXML, logf)
}

func (o Options) uplink(name string) string {
	if to, ok := o.Uplinks[name]; ok {
		return to
	}
	return name
}

// sameVM reports whether vs is the VM with the domain's UUID and MAC.
func sameVM(vs daemon.VMStatus, uuid, mac string) bool {
	hw, _ := net.ParseMAC(vs.MAC)
	return strings.EqualFold(vs.UUID, uuid) && hw.String() == mac
}

// peerVMs lists a peer's VMs within ProbeTimeout.
func peerVMs(ctx context.Context, p Peer) ([]daemon.VMStatus, error) {
	pctx, cancel := context.WithTimeout(ctx, ProbeTimeout)
	defer cancel()
	vms, err := p.API.VMs(pctx)
	if err != nil {
		return nil, fmt.Errorf("peer %s: %w", p.Name, err)
	}
	return vms, nil
}

// migrateBegin imports the incoming domain's VMs closed, from the peer that
// runs them. It prints nothing on stdout: libvirt takes the XML unchanged.
func migrateBegin(ctx context.Context, local MigrationAPI, opts Options, domainXML io.Reader, logf func(string, ...any)) (err error) {
	name, vms, err := Parse(domainXML)
	if err != nil {
		return err
	}
	if len(vms) == 0 {
		return nil
	}
	if len(opts.Peers) == 0 {
		return fmt.Errorf("domain %s arrives by migration, but the hook has no --peer (the source host's daemon socket) to take its xdp-hostd interfaces' programs from: add --peer to /etc/libvirt/hooks/qemu (see the README, \"Live migration\")", name)
	}
	if err := probe(ctx, local); err != nil {
		return fmt.Errorf("domain %s: %w", name, err)
	}
	// The source: the one peer with the domain's VMs running.
	var src *Peer
	srcNames := map[string]string{} // MAC -> the VM's name on the source
	var errs []error
	for i := range opts.Peers {
		p := opts.Peers[i]
		pvms, err := peerVMs(ctx, p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, vm := range vms {
			for _, vs := range pvms {
				if !vs.Incoming && sameVM(vs, vm.Config.UUID, vm.Config.MAC) {
					if src != nil && src.Name != p.Name {
						return fmt.Errorf("domain %s: both peers %s and %s run its VM with MAC %s: stop one before migrating", name, src.Name, p.Name, vm.Config.MAC)
					}
					src = &opts.Peers[i]
					srcNames[vm.Config.MAC] = vs.Name
				}
			}
		}
	}
	if src == nil {
		return fmt.Errorf("domain %s (UUID %s): no peer daemon runs its xdp-hostd interfaces, so their programs cannot follow it (is the source host's daemon socket among the hook's --peer?): %w", name, vms[0].Config.UUID, errors.Join(errs...))
	}
	var imported []string
	defer func() {
		if err == nil {
			return
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), RollbackTimeout)
		defer cancel()
		for _, n := range imported {
			if aerr := local.AbortImport(rctx, n); aerr != nil {
				logf("xdp-hostd hook: domain %s: remove incoming VM %s again: %v", name, n, aerr)
			}
		}
	}()
	for _, vm := range vms {
		sn, ok := srcNames[vm.Config.MAC]
		if !ok {
			return fmt.Errorf("domain %s: peer %s runs some of its xdp-hostd interfaces but not %s", name, src.Name, vm.Config.MAC)
		}
		actx, cancel := context.WithTimeout(ctx, PrepareTimeout)
		raw, _, err := src.API.Export(actx, sn, false)
		if err != nil {
			cancel()
			return fmt.Errorf("domain %s: export VM %s from %s: %w", name, sn, src.Name, err)
		}
		req := daemon.ImportRequest{Document: raw, Uplink: opts.uplink(vm.Uplink), Queues: vm.Config.Queues, Tap: vm.Config.Tap,
			TapMode: vm.Config.TapMode, VhostUserSocket: vm.Config.VhostUserSocket, AgentSocket: vm.Config.AgentSocket}
		res, err := local.Import(actx, req)
		cancel()
		if err != nil {
			return fmt.Errorf("domain %s: this host refuses VM %s from %s (the migration is cancelled; it runs on there): %w", name, sn, src.Name, err)
		}
		imported = append(imported, sn)
		logf("xdp-hostd hook: domain %s: VM %s incoming from %s (%d maps, %d entries checked); it drops its frames until the source has stopped", name, sn, src.Name, res.Maps, res.Entries)
	}
	return nil
}

// stopped runs the final step for each of the domain's VMs here that a
// peer has incoming: the domain has migrated there. It never fails (the
// domain is gone from here whatever it says).
func stopped(ctx context.Context, local MigrationAPI, opts Options, domainXML io.Reader, logf func(string, ...any)) {
	name, uuid, macs, err := owned(domainXML)
	if err != nil || len(macs) == 0 || uuid == "" {
		return
	}
	if err := probe(ctx, local); err != nil {
		logf("xdp-hostd hook: domain %s: %v", name, err)
		return
	}
	lctx, cancel := context.WithTimeout(ctx, ReleaseTimeout)
	mine, err := local.VMs(lctx)
	cancel()
	if err != nil {
		logf("xdp-hostd hook: domain %s: list VMs: %v", name, err)
		return
	}
	type move struct {
		vm   string
		peer Peer
	}
	var moves []move
	for _, vs := range mine {
		if vs.Incoming || !strings.EqualFold(vs.UUID, uuid) {
			continue
		}
		hw, _ := net.ParseMAC(vs.MAC)
		if !macs[hw.String()] {
			continue
		}
		for _, p := range opts.Peers {
			pvms, err := peerVMs(ctx, p)
			if err != nil {
				logf("xdp-hostd hook: domain %s: %v", name, err)
				continue
			}
			for _, pv := range pvms {
				if pv.Incoming && pv.Name == vs.Name && sameVM(pv, uuid, hw.String()) {
					moves = append(moves, move{vs.Name, p})
				}
			}
		}
	}
	for _, m := range moves {
		if err := final(ctx, local, m.peer, m.vm); err != nil {
			logf("xdp-hostd hook: domain %s: VM %s: the final step to %s failed, the VM has no network there: %v", name, m.vm, m.peer.Name, err)
			continue
		}
		logf("xdp-hostd hook: domain %s: VM %s moved to %s with its program and maps", name, m.vm, m.peer.Name)
	}
}

// final freezes vm here, imports its final document into the peer and
// removes it here; if the peer fails, it is thawed here and the peer
// keeps nothing.
func final(ctx context.Context, local MigrationAPI, p Peer, vm string) error {
	fctx, cancel := context.WithTimeout(ctx, PrepareTimeout)
	defer cancel()
	raw, _, err := local.Export(fctx, vm, true)
	if err != nil {
		return fmt.Errorf("final export: %w", err)
	}
	if _, err := p.API.Import(fctx, daemon.ImportRequest{Document: raw, Final: true}); err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), RollbackTimeout)
		defer cancel()
		p.API.AbortImport(rctx, vm)
		local.Thaw(rctx, vm)
		return fmt.Errorf("final import: %w", err)
	}
	if err := local.RemoveVM(fctx, vm); err != nil {
		return fmt.Errorf("it runs there, but removing it here failed: %w", err)
	}
	return nil
}
