package vhost

import (
	"errors"
	"fmt"
	"log/slog"
)

// RXHandoff takes RX virtqueues over from the device: for zero-copy
// delivery, where another component (package zerocopy's GuestRX, through
// vmport) takes the guest's RX buffers itself and gives them to the kernel.
// While a pair's RX queue is handed off, the device's own RX path (Deliver,
// Offer) must not be used on that pair.
//
// Both methods are called with the device's control lock held: they must
// not call back into the device (NotifyRX included), and must not wait for
// anything that does.
type RXHandoff interface {
	// TakeRX offers the pair's RX queue, just started or just moved to a
	// new memory table. An error declines it (logged by the device, with
	// the reason): the copy path serves the pair.
	TakeRX(pair int, rx HandedRX) error
	// ReleaseRX takes the queue back: before the queue stops, the memory
	// table changes or is unmapped, the front-end disconnects, or dirty
	// logging starts. When it returns nothing may touch the queue or its
	// memory any more, the kernel included. giveBack asks for buffers in
	// flight to be returned as empty used entries (not on disconnect).
	ReleaseRX(pair int, giveBack bool)
	// DeclinedRX says why the device did not offer the pair's RX queue
	// (dirty logging, guest memory that can shrink, a memory fault): the
	// copy path serves it.
	DeclinedRX(pair int, reason error)
}

// HandedRX is an RX queue handed off: its virtqueue (not safe for
// concurrent use: the taker is its only user until ReleaseRX), the memory
// table it lives in, and the virtio-net header length negotiated.
type HandedRX struct {
	VQ        *Virtqueue
	Mem       *MemoryTable
	HeaderLen int
}

// errLogging declines a handoff while dirty pages are logged: writes by the
// kernel into guest memory would not be in the log.
var errLogging = errors.New("dirty page logging (migration) is on: the kernel's writes into guest memory would not be logged")

// offerRX hands q (an RX queue with a virtqueue) to the handoff, if any.
// Called with d.mu held.
func (d *NetDevice) offerRX(q *queue, log *slog.Logger) {
	h := d.cfg.RXHandoff
	if h == nil || q.tx || q.vq == nil || d.mem == nil {
		return
	}
	if d.handed == nil {
		d.handed = make([]bool, d.pairs)
	}
	pair := q.index / 2
	if d.handed[pair] {
		return
	}
	var err error
	switch {
	case d.logging():
		err = errLogging
	case d.faulted.Load():
		err = errFaulted
	default:
		for i, s := range d.mem.Sealing() {
			if s == Shrinkable {
				err = fmt.Errorf("guest memory region %d can shrink under the back-end (%v): zero-copy needs guest memory that stays, a memfd sealed against shrinking (QEMU's memory-backend-memfd; DPDK's --no-huge memory is not)", i, s)
				break
			}
		}
	}
	if err == nil {
		err = h.TakeRX(pair, HandedRX{VQ: q.vq, Mem: d.mem, HeaderLen: d.hdrLen})
	} else {
		h.DeclinedRX(pair, err)
	}
	if log == nil {
		log = d.log
	}
	if err != nil {
		log.Info("vhost: RX queue stays with the copy path", "queue", q.index, "reason", err)
		return
	}
	d.handed[pair] = true
	log.Debug("vhost: RX queue handed off", "queue", q.index)
}

// releaseRX takes q back from the handoff. Called with d.mu held.
func (d *NetDevice) releaseRX(q *queue, giveBack bool) {
	if q.tx || d.handed == nil || !d.handed[q.index/2] {
		return
	}
	d.cfg.RXHandoff.ReleaseRX(q.index/2, giveBack)
	d.handed[q.index/2] = false
}

// releaseAllRX takes every handed-off queue back. Called with d.mu held.
func (d *NetDevice) releaseAllRX(giveBack bool) {
	for _, q := range d.queues {
		d.releaseRX(q, giveBack)
	}
}

// offerAllRX offers every started RX queue. Called with d.mu held.
func (d *NetDevice) offerAllRX(log *slog.Logger) {
	for _, q := range d.queues {
		d.offerRX(q, log)
	}
}

// HandedOff reports whether the pair's RX queue is handed off now.
func (d *NetDevice) HandedOff(pair int) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.handed != nil && pair >= 0 && pair < len(d.handed) && d.handed[pair]
}

// NotifyRX signals the call eventfd of the pair's RX queue (for a handoff
// that published used entries the driver asked to hear about). Do not call
// it from within TakeRX or ReleaseRX.
func (d *NetDevice) NotifyRX(pair int) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if pair < 0 || pair >= d.pairs {
		return
	}
	d.queues[2*pair].signal()
}

// ErrHandedOff is returned by Offer and Deliver on a pair whose RX queue is
// handed off (RXHandoff): the taker delivers into it.
var ErrHandedOff = errors.New("vhost: RX queue handed off (zero-copy)")
