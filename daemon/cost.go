package daemon

import (
	"context"
	"time"

	"github.com/xdp-hostd/xdp-hostd/guestprog"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
)

// ProgramCost is what a VM's program costs per packet: the budget the policy
// checked it against (instructions in the worst case) and what the frame
// measured at run time (one packet in 64 timed).
type ProgramCost struct {
	// NSPerPacket is the mean over the last watch window (or since the VM
	// was added, before the first window ends); 0 before any packet.
	NSPerPacket float64 `json:"ns_per_packet"`
	// Sampled and SampledNS are the totals since the VM was added.
	Sampled   uint64 `json:"sampled_packets"`
	SampledNS uint64 `json:"sampled_ns"`
	// BudgetNS is the run-time budget (0: measured only).
	BudgetNS float64 `json:"budget_ns_per_packet,omitempty"`
}

// costWindow is how often the watcher reads every VM's cost counters, and
// costMinSamples how many timed packets a window needs before its mean
// counts: a few slow packets (a cold cache after a program swap) must not
// trip the budget.
const (
	costWindow     = time.Second
	costMinSamples = 64
)

// programCost reports a VM's measured cost.
func (d *Daemon) programCost(vm *hostnet.VM) ProgramCost {
	c, err := vm.Cost()
	if err != nil {
		return ProgramCost{}
	}
	pc := ProgramCost{Sampled: c.Sampled, SampledNS: c.NS, NSPerPacket: c.NSPerPacket(), BudgetNS: d.cfg.MaxNSPerPacket}
	d.costMu.Lock()
	if w, ok := d.costMean[vm]; ok {
		pc.NSPerPacket = w
	}
	d.costMu.Unlock()
	return pc
}

// watchCost reads every VM's cost counters once per window until ctx ends.
// A VM whose program took more than the run-time budget per packet over a
// window (of at least costMinSamples timed packets) is logged; with
// EnforceNSPerPacket its program is replaced by the built-in one, logged
// and audited.
//
// Readings are kept per *hostnet.VM, not per name: a VM removed and added
// again under its name has new counters, and a window must never span the
// two (the difference would wrap around).
func (d *Daemon) watchCost(ctx context.Context) {
	last := map[*hostnet.VM]guestprog.Cost{}
	tick := time.NewTicker(costWindow)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		seen := map[*hostnet.VM]bool{}
		for _, dp := range d.Dataplanes() {
			for _, vm := range dp.VMs() {
				seen[vm] = true
				c, err := vm.Cost()
				if err != nil {
					continue
				}
				prev, ok := last[vm]
				last[vm] = c
				if !ok {
					continue // the first reading starts the first window
				}
				w := c.Sub(prev)
				if w.Sampled < costMinSamples {
					continue
				}
				mean := w.NSPerPacket()
				d.costMu.Lock()
				d.costMean[vm] = mean
				d.costMu.Unlock()
				if d.cfg.MaxNSPerPacket <= 0 || mean <= d.cfg.MaxNSPerPacket {
					continue
				}
				d.overBudget(vm, mean)
			}
		}
		for vm := range last {
			if !seen[vm] {
				delete(last, vm)
				d.costMu.Lock()
				delete(d.costMean, vm)
				d.costMu.Unlock()
			}
		}
	}
}

func (d *Daemon) overBudget(vm *hostnet.VM, mean float64) {
	id, err := d.Programs.Current(vm.Name())
	if err != nil || id == 0 {
		return // the built-in program: nothing to swap
	}
	if !d.cfg.EnforceNSPerPacket {
		d.log.Warn("a VM's program is over its run-time budget", "vm", vm.Name(), "program", id,
			"ns_per_packet", int64(mean), "budget_ns", d.cfg.MaxNSPerPacket)
		return
	}
	if err := d.Programs.Remove(vm.Name(), id); err != nil {
		d.log.Error("could not swap a program over its run-time budget back to the built-in one", "vm", vm.Name(), "program", id, "err", err)
		return
	}
	d.log.Warn("audit: prog_over_budget", "audit", "prog_over_budget", "vm", vm.Name(), "program", id,
		"ns_per_packet", int64(mean), "budget_ns", d.cfg.MaxNSPerPacket, "action", "built-in program restored")
}
