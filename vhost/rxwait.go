package vhost

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// WaitRX waits, at most timeout, for the guest to make RX buffers of queue
// pair pair available, instead of sleeping while its RX ring is full: it
// asks the driver to kick (used flags, or avail_event with EVENT_IDX),
// checks the ring once more, and waits on the RX queue's kick eventfd. It
// reports whether buffers are (probably) there; false after the timeout.
// A queue without a kick fd (polled) is not waited on: false at once. The
// error is ErrNotReady when the queue is not running, or a fault's.
//
// Notifications are asked for only while waiting, so a guest that keeps
// its ring stocked never exits to kick the RX queue.
func (d *NetDevice) WaitRX(pair int, timeout time.Duration) (bool, error) {
	if pair < 0 || pair >= d.pairs {
		return false, fmt.Errorf("vhost: wait: queue pair %d out of range [0, %d)", pair, d.pairs)
	}
	fd, more, err := d.armRX(pair, true)
	if err != nil || more || fd < 0 {
		return more, err
	}
	// The kick fd is a dup: the control plane may replace or close the
	// queue's own meanwhile (a poll on a dead queue just times out).
	defer unix.Close(fd)
	ts := unix.NsecToTimespec(int64(timeout))
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, perr := unix.Ppoll(pfd, &ts, nil)
	if _, _, err := d.armRX(pair, false); err != nil {
		return false, err
	}
	if perr != nil && perr != unix.EINTR {
		return false, fmt.Errorf("vhost: waiting for RX buffers on queue pair %d: %w", pair, perr)
	}
	return n > 0, nil
}

// armRX, with arm, drains the RX queue's kick eventfd, enables the
// driver's notifications and returns a dup of the kick fd (-1 if none)
// unless buffers are there already (more). Without arm it disables them
// again. Every write to the used ring is marked in the dirty log.
func (d *NetDevice) armRX(pair int, arm bool) (fd int, more bool, err error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	q := d.queues[2*pair]
	q.mu.Lock()
	defer q.mu.Unlock()
	if d.faulted.Load() {
		return -1, false, errFaulted
	}
	vq := q.vq
	if vq == nil || !q.enabled {
		return -1, false, ErrNotReady
	}
	if err := vq.Broken(); err != nil {
		return -1, false, err
	}
	if arm && q.kickFD < 0 {
		return -1, false, nil
	}
	old := armFaults() // the used ring's flags / avail_event, the avail index
	defer func() {
		if ferr := d.caught(q, old, recover()); ferr != nil {
			fd, more, err = -1, false, ferr
		}
	}()
	if !arm {
		vq.DisableNotify()
		if d.logging() {
			d.startLog(q)
			d.logUsed(q)
			d.endLog(q)
		}
		return -1, false, nil
	}
	var buf [8]byte
	unix.Read(q.kickFD, buf[:]) // nonblocking: a kick from before counts for nothing
	if more = vq.EnableNotify(); more {
		vq.DisableNotify()
	}
	if d.logging() {
		d.startLog(q)
		d.logUsed(q)
		d.endLog(q)
	}
	if more {
		return -1, true, nil
	}
	fd, err = unix.FcntlInt(uintptr(q.kickFD), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, false, fmt.Errorf("vhost: dup kick fd of queue %d: %w", q.index, err)
	}
	return fd, false, nil
}
