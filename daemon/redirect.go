package daemon

import (
	"errors"
	"fmt"
	"sync"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
)

// redirectWarnings are, per VM, the devices its frames are redirected into
// (its uplink: the tap's transmit, XDP_TX; its ports) that drop them: a
// veth whose peer has neither an XDP program nor GRO on. The counters
// count such frames as redirected; the warnings say they go nowhere.
type redirectWarnings struct {
	mu sync.Mutex
	m  map[*hostnet.VM][]string
}

// checkRedirects checks vm's uplink and ports when it is attached or its
// ports change: each device that will drop what is redirected into it is
// logged as a warning and kept for vmStatus.
func (d *Daemon) checkRedirects(netns string, vm *hostnet.VM) {
	w := d.redirectProblems(netns, vm, true)
	for _, msg := range w {
		d.log.Warn("frames this VM sends will be dropped by the kernel", "vm", vm.Name(), "uplink", vm.Uplink(), "problem", msg)
	}
	d.redirects.set(vm, w)
}

// redirectWarningsOf is what vm show says: the VM's warnings, checked
// again (a peer fixed since clears them). Only a VM that had one is
// checked again, so a status costs nothing more for the others.
func (d *Daemon) redirectWarningsOf(vm *hostnet.VM) []string {
	d.redirects.mu.Lock()
	had := d.redirects.m[vm] != nil
	d.redirects.mu.Unlock()
	if !had {
		return nil
	}
	w := d.redirectProblems(d.netnsOf(vm), vm, false)
	d.redirects.set(vm, w)
	return w
}

func (r *redirectWarnings) set(vm *hostnet.VM, w []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[*hostnet.VM][]string{}
	}
	if len(w) == 0 {
		delete(r.m, vm)
		return
	}
	r.m[vm] = w
}

func (r *redirectWarnings) forget(vm *hostnet.VM) { r.set(vm, nil) }

// redirectProblems checks the devices of vm's port table (port 0 is the
// uplink); another VM's tap takes redirected frames and is skipped. A peer
// that cannot be found is logged (when log is set), not warned about.
func (d *Daemon) redirectProblems(netns string, vm *hostnet.VM, log bool) []string {
	var out []string
	checked := map[string]bool{}
	for _, p := range vm.Ports() {
		if p.VM != "" || checked[p.Ifname] {
			continue
		}
		checked[p.Ifname] = true
		problem, err := hostnet.RedirectProblem(netns, p.Ifname)
		if err != nil {
			if log {
				msg := "cannot check whether the device drops redirected frames"
				if errors.Is(err, hostnet.ErrNotFound) {
					d.log.Info(msg, "vm", vm.Name(), "port", p.Number, "err", err)
				} else {
					d.log.Warn(msg, "vm", vm.Name(), "port", p.Number, "err", err)
				}
			}
			continue
		}
		if problem == "" {
			continue
		}
		what := fmt.Sprintf("port %d (%s)", p.Number, p.Ifname)
		if p.Number == hostnet.UplinkPort {
			what = "uplink " + p.Ifname
		}
		out = append(out, what+": "+problem)
	}
	return out
}

// netnsOf is the namespace of vm's uplink.
func (d *Daemon) netnsOf(vm *hostnet.VM) string {
	for _, dp := range d.dps {
		if up, _, _ := dp.Uplink(); up == vm.Uplink() {
			return d.netns[dp]
		}
	}
	return ""
}
