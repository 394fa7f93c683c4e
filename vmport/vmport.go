// Package vmport is a VM's vhost-user port: the daemon serves the VM's
// virtio-net device on a vhost-user socket (package vhost) and feeds it
// from AF_XDP sockets on the VM's dedicated uplink queues (package
// zerocopy), into which the VM program's PASS verdict redirects. Frames the
// guest transmits are checked against the VM's MAC and sent out of the
// uplink through the same sockets.
//
// Copy mode: a received frame is copied once, from the daemon's UMEM into
// the guest's RX buffers; a transmitted frame once, from guest memory into
// the UMEM. Everything moves in batches: one Receive, one Deliver (one
// used-index update, at most one call eventfd write), one Release (fill-ring
// refill) per batch; one Transmit (one kick) per TX batch.
package vmport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/guestprog"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/vhost"
	"github.com/xdp-hostd/xdp-hostd/zerocopy"
)

// Config describes a VM's vhost-user port.
type Config struct {
	// VM is the dataplane's VM; its Delivery must be guestprog.DeliverXSK.
	// Queue pair i of the device is fed by the VM's i-th dedicated queue.
	VM *hostnet.VM
	// Socket is the vhost-user socket the VM's QEMU connects to.
	Socket string
	// NetNS is the uplink's namespace path ("" for the caller's).
	NetNS string
	// RingSize is the AF_XDP ring size (power of two; default
	// DefaultRingSize).
	RingSize int
	// Frames is the number of UMEM frames per queue (default 2 * RingSize:
	// a full fill ring and as many for transmit).
	Frames int
	// Batch is the most frames moved per batch (default DefaultBatch).
	Batch int
	// RXAffinity, if set, are the CPUs the receive threads (one per queue,
	// each locked to its goroutine) may run on.
	RXAffinity []int
	// BusyPoll, when positive, makes the receive threads and the device's
	// TX kick handling spin this long for more work before they sleep in
	// poll: lower latency for burning a CPU. Zero is event-driven only.
	BusyPoll time.Duration
	// NoFlood turns off the copies of broadcast and multicast frames from
	// the uplink's shared queues (ARP requests, for example).
	NoFlood bool
	// Mode is ModeCopy ("" too) or ModeZeroCopy (zerocopy.go).
	Mode string
	Log  *slog.Logger
}

// Stats are the port's counters.
type Stats struct {
	RXDelivered uint64 `json:"rx_delivered"` // frames copied into the guest
	RXDropped   uint64 `json:"rx_dropped"`   // frames the guest had no buffers for within holdLimit
	// RXFlooded are broadcast and multicast frames from the uplink's shared
	// queues delivered into the guest.
	RXFlooded uint64 `json:"rx_flooded"`
	TXSent    uint64 `json:"tx_sent"`    // guest frames sent out of the uplink
	TXSpoofed uint64 `json:"tx_spoofed"` // guest frames with a source MAC not the VM's
	TXDropped uint64 `json:"tx_dropped"` // guest frames refused by AF_XDP back-pressure
	// RXCPU is the CPU time the receive threads used (updated when they go
	// idle and every 256 batches).
	RXCPU time.Duration `json:"rx_cpu_ns"`
}

type queue struct {
	idx   int // queue pair
	rxq   int // uplink RX queue
	umem  *zerocopy.UMEM
	mu    sync.Mutex // the socket is not thread-safe: RX loop and TX handler share it
	sock  *zerocopy.Socket
	descs []zerocopy.Desc
	rx    [][]byte
}

// Port is a running vhost-user port.
type Port struct {
	cfg    Config
	log    *slog.Logger
	mac    []byte
	dev    *vhost.NetDevice
	srv    *vhost.Server
	queues []*queue
	cancel context.CancelFunc
	wg     sync.WaitGroup

	txGood [][]byte // TX handler scratch (the handler runs on one goroutine)
	stats  struct {
		rxDelivered, rxDropped, txSent, txSpoofed, txDropped, floodDelivered atomic.Uint64
	}
	rxCPU []atomic.Int64 // per queue: its receive thread's CPU time
	zc    *zeroCopy      // zero-copy mode state (zerocopy.go); nil in copy mode
}

// Open creates the AF_XDP sockets, registers them as the VM's delivery
// targets, and serves the vhost-user socket. On error nothing is left.
func Open(cfg Config) (_ *Port, err error) {
	if cfg.VM == nil || cfg.VM.Delivery() != guestprog.DeliverXSK {
		return nil, errors.New("vhost-user port: the VM must deliver into AF_XDP sockets (VMSpec.Delivery = DeliverXSK)")
	}
	if err := ValidMode(cfg.Mode); err != nil {
		return nil, fmt.Errorf("VM %s: %w", cfg.VM.Name(), err)
	}
	if cfg.Socket == "" {
		return nil, fmt.Errorf("VM %s: no vhost-user socket path", cfg.VM.Name())
	}
	if cfg.RingSize == 0 {
		cfg.RingSize = DefaultRingSize
	}
	if cfg.Frames == 0 {
		cfg.Frames = 2 * cfg.RingSize
	}
	if cfg.Batch == 0 {
		cfg.Batch = DefaultBatch
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	p := &Port{cfg: cfg, log: cfg.Log.With("vm", cfg.VM.Name()), mac: bytes.Clone(cfg.VM.MAC())}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	for i, q := range cfg.VM.Queues() {
		qu := &queue{idx: i, rxq: q, descs: make([]zerocopy.Desc, cfg.Batch), rx: make([][]byte, cfg.Batch)}
		p.queues = append(p.queues, qu)
		if qu.umem, err = zerocopy.AllocUMEM(cfg.Frames, zerocopy.MinFrameSize); err != nil {
			return nil, fmt.Errorf("VM %s queue %d: %w", cfg.VM.Name(), q, err)
		}
		qu.sock, err = zerocopy.Open(zerocopy.Options{NetNS: cfg.NetNS, Ifname: cfg.VM.Uplink(), Queue: q, UMEM: qu.umem, RingSize: cfg.RingSize})
		if err != nil {
			return nil, fmt.Errorf("VM %s: AF_XDP socket on %s queue %d: %w", cfg.VM.Name(), cfg.VM.Uplink(), q, err)
		}
		if err := cfg.VM.SetSocket(q, qu.sock.FD()); err != nil {
			return nil, err
		}
	}
	p.txGood = make([][]byte, 0, 256)
	if err := p.openZeroCopy(); err != nil {
		return nil, fmt.Errorf("VM %s: %w", cfg.VM.Name(), err)
	}
	if p.dev, err = vhost.NewNetDevice(vhost.NetConfig{QueuePairs: len(p.queues), TX: p.transmit, BusyPoll: cfg.BusyPoll, Logger: p.log, RXHandoff: p.handoff()}); err != nil {
		return nil, fmt.Errorf("VM %s: %w", cfg.VM.Name(), err)
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Socket), 0o755); err != nil {
		return nil, fmt.Errorf("VM %s: vhost-user socket directory: %w", cfg.VM.Name(), err)
	}
	if p.srv, err = vhost.NewServer(cfg.Socket, p.dev, p.log); err != nil {
		return nil, fmt.Errorf("VM %s: %w", cfg.VM.Name(), err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		if err := p.srv.Serve(ctx); err != nil && ctx.Err() == nil {
			p.log.Error("vhost-user server stopped", "socket", cfg.Socket, "err", err)
		}
	}()
	if !cfg.NoFlood {
		fd, err := openFlood(cfg.NetNS, cfg.VM.Uplink())
		if err != nil {
			cancel()
			return nil, fmt.Errorf("VM %s: %w", cfg.VM.Name(), err)
		}
		p.wg.Add(1)
		go p.flood(ctx, fd)
	}
	p.rxCPU = make([]atomic.Int64, len(p.queues))
	for _, qu := range p.queues {
		p.wg.Add(1)
		go p.receive(ctx, qu)
	}
	p.log.Info("vhost-user port ready", "socket", cfg.Socket, "queues", cfg.VM.Queues())
	return p, nil
}

// Defaults of Config. An AF_XDP ring of 8192 rides out a receive thread
// that is off its CPU for a few milliseconds at millions of frames per
// second; batches of 256 cost about 1.7 times less per frame than 64 (one
// Receive, one used-index update, one interrupt, one Release each).
const (
	DefaultRingSize = 8192
	DefaultBatch    = 256
)

// holdWait bounds one wait for the guest's RX buffers, so that Close is
// seen while a guest holds frames back.
const holdWait = 10 * time.Millisecond

// holdLimit is how long frames wait for the guest to post RX buffers
// before they are dropped: a guest that is slow for a moment loses nothing
// (the frames wait in the socket's ring and the UMEM), one that stopped
// reading does not hold the queue forever.
const holdLimit = 100 * time.Millisecond

// receive moves frames from one AF_XDP socket into the guest, a batch at a
// time, sleeping in poll when there is nothing (no core burned while idle).
// Frames the guest has no buffers for yet stay pending, oldest first.
func (p *Port) receive(ctx context.Context, qu *queue) {
	defer p.wg.Done()
	// One thread per queue, so that it can be placed and its CPU time read.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if len(p.cfg.RXAffinity) > 0 {
		var set unix.CPUSet
		for _, c := range p.cfg.RXAffinity {
			set.Set(c)
		}
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			p.log.Warn("pin receive thread", "cpus", p.cfg.RXAffinity, "err", err)
		}
	}
	cpu0 := threadCPU()
	account := func() { p.rxCPU[qu.idx].Store(int64(threadCPU() - cpu0)) }
	defer account()
	pending := 0 // qu.descs[:pending] / qu.rx[:pending] wait for the guest
	var stalled, lastWork time.Time
	shedding := false // the guest stopped taking frames: drop until it takes one
	qu.mu.Lock()
	src := qu.sock // the socket the pending frames came from (zero-copy mode swaps it, under qu.mu)
	qu.mu.Unlock()
	for batches := 0; ctx.Err() == nil; batches++ {
		if batches%256 == 0 {
			account()
		}
		if p.zc != nil && p.zc.active[qu.idx].Load() {
			p.stats.rxDropped.Add(uint64(pending)) // their socket is gone
			pending = 0
			p.zcReceive(ctx, qu)
			continue
		}
		if pending < len(qu.descs) {
			qu.mu.Lock()
			if qu.sock != src {
				p.stats.rxDropped.Add(uint64(pending))
				pending, src = 0, qu.sock
			}
			n := qu.sock.Receive(qu.descs[pending:])
			for i := pending; i < pending+n; i++ {
				qu.rx[i] = qu.sock.Frame(qu.descs[i])
			}
			qu.mu.Unlock()
			pending += n
		}
		if pending > 0 {
			lastWork = time.Now()
		}
		if pending == 0 && p.cfg.BusyPoll > 0 && time.Since(lastWork) < p.cfg.BusyPoll {
			continue // spin: Receive again at once
		}
		if pending == 0 {
			account()
			// Poll the fd directly rather than Socket.Wait, which looks at
			// TX state the TX handler may be changing: readable means the
			// RX ring has frames. Bounded, so Close is seen.
			qu.mu.Lock()
			fd := qu.sock.FD()
			qu.mu.Unlock()
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if _, err := unix.Poll(pfd, 100); err != nil && err != unix.EINTR {
				p.log.Warn("AF_XDP poll", "queue", qu.rxq, "err", err)
				time.Sleep(10 * time.Millisecond)
			}
			continue
		}
		// The frames stay in the UMEM until Release, so Deliver copies
		// them without holding the socket.
		delivered, consumed, derr := p.dev.Offer(qu.idx, qu.rx[:pending])
		drop := consumed - delivered // too large for any guest buffer
		switch {
		case delivered > 0:
			stalled, shedding = time.Time{}, false
		case consumed > 0:
			// Progress without a delivery: keep holding the rest.
		case derr != nil || shedding:
			// No front-end (or a broken ring), or a guest that already
			// overstayed holdLimit: drop at once, so the socket's ring
			// is drained at line rate and a guest that comes back gets
			// fresh frames, not seconds-old ones.
			drop, consumed = pending, pending
		case stalled.IsZero():
			stalled = time.Now()
		case time.Since(stalled) > holdLimit:
			drop, consumed, stalled, shedding = pending, pending, time.Time{}, true
		}
		p.stats.rxDelivered.Add(uint64(delivered))
		p.stats.rxDropped.Add(uint64(drop))
		if done := consumed; done > 0 {
			qu.mu.Lock()
			if qu.sock == src {
				if err := qu.sock.Release(qu.descs[:done]); err != nil {
					p.log.Warn("AF_XDP release", "queue", qu.rxq, "err", err)
				}
			}
			qu.mu.Unlock()
			copy(qu.descs, qu.descs[done:pending])
			copy(qu.rx, qu.rx[done:pending])
			pending -= done
		}
		if delivered == 0 && pending > 0 && !shedding {
			// The guest's RX ring is full: wait for its kick (it posts
			// buffers), within what is left of holdLimit.
			wait := holdWait
			if !stalled.IsZero() {
				wait = min(wait, max(holdLimit-time.Since(stalled), 0))
			}
			if ok, _ := p.dev.WaitRX(qu.idx, wait); !ok {
				schedYield() // no kick fd (a polled queue), or the wait ended
			}
		}
	}
}

// transmit is the device's TX handler: frames from the guest, checked
// against the VM's MAC, out of the uplink through the pair's socket. It
// never blocks: back-pressure drops (counted). It runs on the device's kick
// goroutine, which survives a fault on guest memory (see vhost.TXHandler).
func (p *Port) transmit(pair int, frames [][]byte) {
	good := p.txGood[:0]
	for _, f := range frames {
		if len(f) < 14 || !bytes.Equal(f[6:12], p.mac) {
			p.stats.txSpoofed.Add(1)
			continue
		}
		good = append(good, f)
	}
	p.txGood = good[:0]
	if len(good) == 0 || len(p.queues) == 0 {
		return
	}
	n, err := p.sendTX(pair, good)
	p.stats.txSent.Add(uint64(n))
	p.stats.txDropped.Add(uint64(len(good) - n))
	if err != nil {
		p.log.Debug("AF_XDP transmit", "err", err)
	}
}

// send queues frames on the socket. The frames are in guest memory, which
// faults when the front-end shrank it: the device recovers that panic, so
// the lock is released by defer (Transmit gives its frames back itself).
func (qu *queue) send(frames [][]byte) (int, error) {
	qu.mu.Lock()
	defer qu.mu.Unlock()
	qu.sock.Complete()
	return qu.sock.Transmit(frames)
}

// Stats reads the port's counters.
func (p *Port) Stats() Stats {
	st := Stats{
		RXDelivered: p.stats.rxDelivered.Load(), RXDropped: p.stats.rxDropped.Load(), RXFlooded: p.stats.floodDelivered.Load(),
		TXSent: p.stats.txSent.Load(), TXSpoofed: p.stats.txSpoofed.Load(), TXDropped: p.stats.txDropped.Load(),
	}
	for i := range p.rxCPU {
		st.RXCPU += time.Duration(p.rxCPU[i].Load())
	}
	return st
}

// SocketStats are the counters of the AF_XDP socket on one of the VM's
// uplink RX queues.
type SocketStats struct {
	RXQueue int // the uplink RX queue the socket is bound to
	zerocopy.Stats
}

// SocketStats reads the counters of each of the port's AF_XDP sockets (one
// getsockopt each; for scrapes, not per packet).
func (p *Port) SocketStats() ([]SocketStats, error) {
	out := make([]SocketStats, 0, len(p.queues))
	for _, qu := range p.queues {
		qu.mu.Lock()
		st, err := qu.sock.Stats()
		qu.mu.Unlock()
		if err != nil {
			return out, err
		}
		out = append(out, SocketStats{RXQueue: qu.rxq, Stats: st})
	}
	return out, nil
}

// Socket is the vhost-user socket's path.
func (p *Port) Socket() string { return p.cfg.Socket }

// FrontEndConnected reports whether a front-end (QEMU, DPDK) is connected
// to the port's vhost-user socket now.
func (p *Port) FrontEndConnected() bool { return p.srv != nil && p.srv.Connected() }

// NoFrontEndSince is since when no front-end has been connected (zero
// while one is).
func (p *Port) NoFrontEndSince() time.Time {
	if p.srv == nil {
		return time.Time{}
	}
	return p.srv.NoFrontEndSince()
}

// Device is the port's virtio-net device (for its queue counters).
func (p *Port) Device() *vhost.NetDevice { return p.dev }

// Close stops serving, unregisters the sockets and releases everything.
func (p *Port) Close() error {
	if p.cancel != nil {
		p.cancel()
	}
	var errs []error
	if p.srv != nil {
		errs = append(errs, p.srv.Close())
	}
	p.wg.Wait()
	p.closeZeroCopy()
	for _, qu := range p.queues {
		if qu.sock != nil {
			errs = append(errs, p.cfg.VM.ClearSocket(qu.rxq), qu.sock.Close())
		}
		if qu.umem != nil {
			errs = append(errs, qu.umem.Close())
		}
	}
	p.queues = nil
	return errors.Join(errs...)
}

// schedYield gives the CPU to another runnable thread, if any.
func schedYield() { unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0) }

// threadCPU is the calling thread's CPU time.
func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}
