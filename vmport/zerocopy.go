package vmport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/nsrun"
	"github.com/xdp-hostd/xdp-hostd/vhost"
	"github.com/xdp-hostd/xdp-hostd/zerocopy"
)

// Delivery modes (Config.Mode).
const (
	// ModeCopy: frames are received into the daemon's UMEM and copied into
	// guest buffers (the default).
	ModeCopy = "copy"
	// ModeZeroCopy: while a front-end is connected and its memory allows,
	// each RX queue's AF_XDP socket has the guest's memory as its UMEM and
	// the kernel writes frames straight into the guest's RX buffers
	// (zerocopy.GuestRX). TX stays copy, through a packet socket while the
	// queue's AF_XDP socket is the guest's (see zerocopy's package doc).
	// When it is not possible (shrinkable guest memory, dirty logging
	// during migration, a memory layout or kernel that refuses), the port
	// falls back to copy for that connection and logs why.
	ModeZeroCopy = "zerocopy"
)

// ValidMode checks a mode name ("" is copy).
func ValidMode(m string) error {
	switch m {
	case "", ModeCopy, ModeZeroCopy:
		return nil
	}
	return fmt.Errorf("delivery mode %q: want %q or %q", m, ModeCopy, ModeZeroCopy)
}

// zeroCopy is a port's zero-copy state: one GuestRX per pair while the
// device has handed that pair's RX queue over. pairs[i] is guarded by the
// pair's queue.mu; active[i] mirrors pairs[i].g != nil for lock-free checks.
type zeroCopy struct {
	pairs  []zcPair
	active []atomic.Bool
	txFD   int // AF_PACKET socket on the uplink, for TX while handed over

	mu       sync.Mutex
	reason   string // why the last offer fell back to copy ("" if it did not)
	finished zerocopy.GuestRXStats
}

type zcPair struct {
	g      *zerocopy.GuestRX
	view   *vhost.GuestView
	notify bool
}

func (p *Port) openZeroCopy() error {
	if p.cfg.Mode != ModeZeroCopy {
		return nil
	}
	z := &zeroCopy{pairs: make([]zcPair, len(p.queues)), active: make([]atomic.Bool, len(p.queues)), txFD: -1}
	err := nsrun.Do(p.cfg.NetNS, func() error {
		ifi, err := net.InterfaceByName(p.cfg.VM.Uplink())
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return err
		}
		unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1) // best effort
		z.txFD = fd
		return nil
	})
	if err != nil {
		return fmt.Errorf("zero-copy mode: TX packet socket on %s: %w", p.cfg.VM.Uplink(), err)
	}
	p.zc = z
	return nil
}

// handoff is the device's RXHandoff: the port in zero-copy mode, else nil.
func (p *Port) handoff() vhost.RXHandoff {
	if p.cfg.Mode != ModeZeroCopy {
		return nil
	}
	return zcHandoff{p}
}

type zcHandoff struct{ p *Port }

func (h zcHandoff) TakeRX(pair int, rx vhost.HandedRX) error {
	err := h.p.takeRX(pair, rx)
	h.p.zc.mu.Lock()
	h.p.zc.reason = ""
	if err != nil {
		h.p.zc.reason = err.Error()
	}
	h.p.zc.mu.Unlock()
	if err != nil {
		h.p.log.Warn("zero-copy RX not possible: falling back to copy for this connection", "pair", pair, "reason", err)
	}
	return err
}

func (h zcHandoff) DeclinedRX(pair int, reason error) {
	h.p.zc.mu.Lock()
	h.p.zc.reason = reason.Error()
	h.p.zc.mu.Unlock()
}

func (h zcHandoff) ReleaseRX(pair int, giveBack bool) { h.p.releaseRX(pair, giveBack) }

func (p *Port) takeRX(pair int, rx vhost.HandedRX) error {
	if pair < 0 || pair >= len(p.queues) {
		return fmt.Errorf("queue pair %d: the VM has %d dedicated queues", pair, len(p.queues))
	}
	qu := p.queues[pair]
	view, err := rx.Mem.MapContiguous()
	if err != nil {
		return fmt.Errorf("guest memory layout: %w", err)
	}
	qu.mu.Lock()
	defer qu.mu.Unlock()
	// One socket per queue: the copy socket makes room.
	p.cfg.VM.ClearSocket(qu.rxq)
	qu.sock.Close()
	g, err := zerocopy.OpenGuestRX(zerocopy.GuestRXOptions{
		NetNS: p.cfg.NetNS, Ifname: p.cfg.VM.Uplink(), Queue: qu.rxq,
		View: view, VQ: rx.VQ, HeaderLen: rx.HeaderLen,
		RingSize: min(p.cfg.RingSize, int(rx.VQ.Size())),
		Reserve:  reserveFor(pair, min(p.cfg.RingSize, int(rx.VQ.Size()))),
		Notify:   func() { p.zc.pairs[pair].notify = true },
	})
	if err == nil {
		if err = p.cfg.VM.SetSocket(qu.rxq, g.FD()); err != nil {
			g.Close(true)
		}
	}
	if err != nil {
		view.Close()
		if rerr := p.reopenCopy(qu); rerr != nil {
			return errors.Join(err, rerr)
		}
		return err
	}
	p.zc.pairs[pair] = zcPair{g: g, view: view}
	p.zc.active[pair].Store(true)
	p.log.Info("zero-copy RX: the guest's memory is the AF_XDP UMEM", "pair", pair, "uplink_queue", qu.rxq, "guest_memory", len(view.Bytes()))
	return nil
}

// reserveFor is how many guest buffers pair 0 holds back for the uplink's
// broadcasts (flood.go); other pairs get none.
func reserveFor(pair, ring int) int {
	if pair != 0 {
		return 0
	}
	return min(8, ring/8)
}

func (p *Port) reopenCopy(qu *queue) error {
	s, err := zerocopy.Open(zerocopy.Options{NetNS: p.cfg.NetNS, Ifname: p.cfg.VM.Uplink(), Queue: qu.rxq, UMEM: qu.umem, RingSize: p.cfg.RingSize})
	if err != nil {
		return fmt.Errorf("reopen copy socket on queue %d: %w", qu.rxq, err)
	}
	qu.sock = s
	return p.cfg.VM.SetSocket(qu.rxq, s.FD())
}

// releaseRX closes the pair's GuestRX (the kernel stops writing into guest
// memory before Close returns), then unmaps the view, then puts the copy
// socket back.
func (p *Port) releaseRX(pair int, giveBack bool) {
	if pair < 0 || pair >= len(p.queues) {
		return
	}
	qu := p.queues[pair]
	qu.mu.Lock()
	defer qu.mu.Unlock()
	z := &p.zc.pairs[pair]
	if z.g == nil {
		return
	}
	p.zc.active[pair].Store(false)
	p.cfg.VM.ClearSocket(qu.rxq)
	if err := z.g.Close(giveBack); err != nil {
		p.log.Error("zero-copy RX: close socket", "pair", pair, "err", err)
	}
	st := z.g.Stats()
	p.zc.mu.Lock()
	addGuestStats(&p.zc.finished, st)
	p.zc.mu.Unlock()
	if err := z.view.Close(); err != nil {
		p.log.Error("zero-copy RX: unmap guest memory view", "pair", pair, "err", err)
	}
	*z = zcPair{}
	if err := p.reopenCopy(qu); err != nil {
		p.log.Error("zero-copy RX: back to copy", "pair", pair, "err", err)
	}
	p.log.Info("zero-copy RX released", "pair", pair, "gave_back", st.ReturnedOnClose, "delivered", st.Delivered)
}

// zcReceive is one turn of the receive loop for a pair in zero-copy mode;
// false when the pair is not (any more) handed over.
func (p *Port) zcReceive(ctx context.Context, qu *queue) bool {
	qu.mu.Lock()
	z := &p.zc.pairs[qu.idx]
	if z.g == nil {
		qu.mu.Unlock()
		return false
	}
	n := z.g.Poll()
	fd, hungry := z.g.FD(), z.g.Hungry()
	notify := z.notify
	z.notify = false
	qu.mu.Unlock()
	if notify {
		p.dev.NotifyRX(qu.idx)
	}
	p.stats.rxDelivered.Add(uint64(n))
	if n == 0 && ctx.Err() == nil {
		// Readable when frames are in the RX ring. The guest's new buffers
		// come without a kick (RX notifications are off), so look again
		// within a millisecond while the kernel could hold more of them.
		timeout := 100
		if hungry {
			timeout = 1
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		unix.Poll(pfd, timeout)
	}
	return true
}

// sendTX sends the guest's (checked) frames: through the pair's AF_XDP
// socket, or the packet socket while the pair is in zero-copy mode.
func (p *Port) sendTX(pair int, frames [][]byte) (int, error) {
	qu := p.queues[pair%len(p.queues)]
	if p.zc == nil || !p.zc.active[qu.idx].Load() {
		return qu.send(frames)
	}
	for i, f := range frames {
		if _, err := unix.Write(p.zc.txFD, f); err != nil {
			return i, err
		}
	}
	return len(frames), nil
}

// deliverFlood puts the uplink's broadcasts into pair 0.
func (p *Port) deliverFlood(frames [][]byte) int {
	if p.zc != nil && p.zc.active[0].Load() {
		qu := p.queues[0]
		qu.mu.Lock()
		z := &p.zc.pairs[0]
		n := 0
		if z.g != nil {
			n = z.g.Inject(frames)
		}
		notify := z.notify
		z.notify = false
		qu.mu.Unlock()
		if notify {
			p.dev.NotifyRX(0)
		}
		return n
	}
	n, _ := p.dev.Deliver(0, frames)
	return n
}

func (p *Port) closeZeroCopy() {
	if p.zc != nil && p.zc.txFD >= 0 {
		unix.Close(p.zc.txFD)
		p.zc.txFD = -1
	}
}

// ZeroCopyStatus is what `vm show` reports of the zero-copy mode.
type ZeroCopyStatus struct {
	Mode     string                `json:"mode"`               // configured: copy or zerocopy
	Active   []bool                `json:"active,omitempty"`   // per pair: zero-copy now
	Fallback string                `json:"fallback,omitempty"` // why the last connection fell back to copy
	Stats    zerocopy.GuestRXStats `json:"stats"`              // summed over pairs and connections
	// QueueBroken is why a guest's RX virtqueue broke under zero-copy.
	QueueBroken string `json:"queue_broken,omitempty"`
}

// ZeroCopy reports the port's delivery mode and zero-copy counters.
func (p *Port) ZeroCopy() ZeroCopyStatus {
	st := ZeroCopyStatus{Mode: p.cfg.Mode}
	if st.Mode == "" {
		st.Mode = ModeCopy
	}
	if p.zc == nil {
		return st
	}
	p.zc.mu.Lock()
	st.Fallback = p.zc.reason
	st.Stats = p.zc.finished
	p.zc.mu.Unlock()
	for i, qu := range p.queues {
		st.Active = append(st.Active, p.zc.active[i].Load())
		qu.mu.Lock()
		if g := p.zc.pairs[i].g; g != nil {
			addGuestStats(&st.Stats, g.Stats())
		}
		qu.mu.Unlock()
	}
	if st.Stats.QueueBroken != nil {
		st.QueueBroken = st.Stats.QueueBroken.Error()
	}
	return st
}

func addGuestStats(a *zerocopy.GuestRXStats, b zerocopy.GuestRXStats) {
	a.Posted += b.Posted
	a.Delivered += b.Delivered
	a.Injected += b.Injected
	a.Batches += b.Batches
	a.Notified += b.Notified
	a.Starved += b.Starved
	a.RefusedChain += b.RefusedChain
	a.RefusedTiny += b.RefusedTiny
	a.RefusedOutside += b.RefusedOutside
	a.RefusedOverlap += b.RefusedOverlap
	a.BadCompletions += b.BadCompletions
	a.Moved += b.Moved
	a.ReturnedOnClose += b.ReturnedOnClose
	a.KernelDropped += b.KernelDropped
	a.FillRingEmpty += b.FillRingEmpty
	a.RXRingFull += b.RXRingFull
	a.InvalidFillDesc += b.InvalidFillDesc
	if b.QueueBroken != nil {
		a.QueueBroken = b.QueueBroken
	}
}
