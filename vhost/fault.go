package vhost

import (
	"fmt"
	"runtime/debug"

	"golang.org/x/sys/unix"
)

// Guest memory faults.
//
// Guest memory is a file the front-end shares and can still change: it can
// shrink it (ftruncate), or a hugetlbfs region can run out of pages. Then a
// load or store into the mapping raises SIGBUS, and Go kills the whole
// process (every VM's back-end) unless the goroutine asked for a panic
// instead with debug.SetPanicOnFault. So every method that touches guest
// memory (Offer and Deliver, the TX kick handling with its TX handler, and
// the control plane's start of a ring) arms that on its goroutine for the
// call (armFaults) and recovers at its end (caught): the fault breaks that
// queue (counted in QueueStats.Broken, the error eventfd written), is
// logged, and closes that front-end's connection. Other devices and the
// server's next front-end are not affected. Sealed memfds (F_SEAL_SHRINK)
// cannot shrink at all; see Sealing.

// errFaulted is returned by the data path between a guest memory fault and
// the end of its connection.
var errFaulted = fmt.Errorf("%w: a guest memory fault ended the front-end's connection", ErrQueueBroken)

// armFaults makes a memory fault on the calling goroutine a panic, for
// caught to recover, and returns the previous setting for caught to put
// back.
func armFaults() (old bool) { return debug.SetPanicOnFault(true) }

// caught ends a section armed by armFaults: defer it in a function that
// passes recover() to it directly, while the caller holds d.mu (read or
// write), so the memory table is the one that was touched. It returns nil
// when nothing panicked; for a fault on guest memory it breaks q (nil: no
// queue involved), logs, closes the connection and returns the error. Any
// other panic goes on.
func (d *NetDevice) caught(q *queue, old bool, r any) error {
	debug.SetPanicOnFault(old)
	if r == nil {
		return nil
	}
	f, ok := r.(interface{ Addr() uintptr })
	if !ok {
		panic(r)
	}
	if d.dlog.contains(f.Addr()) {
		return d.logFault(q)
	}
	region, off, ok := d.mem.locate(f.Addr())
	if !ok {
		panic(r) // not guest memory: a bug, not the front-end
	}
	return d.memoryFault(q, region, off)
}

// memoryFault breaks q after a fault at offset off of region's file, and
// closes the connection (once). Called with d.mu held, and q.mu when the
// data path faulted.
func (d *NetDevice) memoryFault(q *queue, region int, off uint64) error {
	qi := -1
	if q != nil {
		qi = q.index
	}
	seal := d.mem.regions[region].seal
	err := fmt.Errorf("%w: queue %d: guest memory fault at offset %#x of the file of region %d (%v): the front-end shrank or removed the memory it shared",
		ErrQueueBroken, qi, off, region, seal)
	return d.breakOnFault(q, err, "vhost: guest memory fault: queue broken, closing the front-end's connection (the front-end shrank or removed its shared memory)",
		"queue", qi, "region", region, "file_offset", fmt.Sprintf("%#x", off), "region_file", seal.String())
}

// logFault breaks q after a fault on the dirty log's mapping (the front-end
// shrank the file of SET_LOG_BASE), and closes the connection.
func (d *NetDevice) logFault(q *queue) error {
	qi := -1
	if q != nil {
		qi = q.index
	}
	err := fmt.Errorf("%w: queue %d: fault on the dirty log (%v): the front-end shrank the file it shared with SET_LOG_BASE",
		ErrQueueBroken, qi, d.dlog.seal)
	return d.breakOnFault(q, err, "vhost: dirty log fault: queue broken, closing the front-end's connection (the front-end shrank its dirty log)",
		"queue", qi, "log_file", d.dlog.seal.String())
}

// breakOnFault breaks q with err, logs msg once and closes the connection.
func (d *NetDevice) breakOnFault(q *queue, err error, msg string, attrs ...any) error {
	if q != nil {
		switch {
		case q.vq != nil:
			q.vq.breakWith(err)
			q.checkBroken()
		case !q.reported: // the ring faulted while it was being started
			q.reported = true
			q.stats.broken.Add(1)
			if q.errFD >= 0 {
				unix.Write(q.errFD, eventOne[:])
			}
		}
	}
	if d.faulted.CompareAndSwap(false, true) {
		log := d.connLog
		if log == nil {
			log = d.log
		}
		log.Error(msg, attrs...)
		if d.abort != nil {
			d.abort()
		}
	}
	return err
}
