package zerocopy

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
)

// Direction says which of RX and TX a socket does.
type Direction uint8

const (
	RX Direction = 1 << iota // receive: fill and RX rings in use
	TX                       // transmit: TX and completion rings in use
	// RXTX is both, the default.
	RXTX = RX | TX
)

// DefaultRingSize is the size of each ring unless Options say otherwise:
// large enough for bursts (64-entry rings lose most of a burst on veth, see
// design.md).
const DefaultRingSize = 2048

// Options configure Open. The zero value of each field is its default.
type Options struct {
	// NetNS is the path of the network namespace the interface is in (for
	// example /run/netns/NAME); "" is the caller's. The socket is created
	// there (through hostnet.NSRunner), so that bind finds the interface.
	NetNS string
	// Ifindex is the interface's index in NetNS; if 0, Ifname is looked up.
	Ifindex int
	Ifname  string
	// Queue is the interface's RX/TX queue the socket is bound to.
	Queue int
	// UMEM is the memory frames live in (required). Each socket needs a
	// UMEM of its own.
	UMEM *UMEM
	// RingSize is the number of entries of each ring, a power of two;
	// default DefaultRingSize.
	RingSize int
	// Dir is RX, TX or RXTX (the default).
	Dir Direction
	// FillFrames is how many frames the socket keeps in the kernel's hands
	// for receiving (in the fill ring, or received and not yet taken by
	// Receive); default RingSize, and at most RingSize, the UMEM's frames
	// (RX) or half of them (RXTX, so that TX has frames too). TX-only
	// sockets fill nothing. The fill ring itself has 2*RingSize entries.
	FillFrames int
	// ZeroCopy binds with XDP_ZEROCOPY (the driver must support it);
	// by default the socket is bound with XDP_COPY.
	ZeroCopy bool
	// NeedWakeup binds with XDP_USE_NEED_WAKEUP: the kernel says in each
	// ring's flags when it must be woken, and Kick and Wait skip system
	// calls it does not need.
	NeedWakeup bool
	// BusyPoll, if positive, turns on busy polling of the queue's NAPI
	// context from this socket's system calls (SO_PREFER_BUSY_POLL,
	// SO_BUSY_POLL = BusyPoll in µs, SO_BUSY_POLL_BUDGET = BusyPollBudget,
	// default 64). Open fails if the kernel refuses.
	BusyPoll       time.Duration
	BusyPollBudget int
	// Spin, if positive, makes Wait check the rings in a loop for up to Spin
	// before it sleeps in poll: lower latency for a core burned meanwhile.
	Spin time.Duration
}

// Stats are a socket's counters.
type Stats struct {
	// From the kernel (XDP_STATISTICS).
	RXDropped        uint64 // dropped for other reasons (e.g. frame too large for the UMEM)
	RXInvalidDescs   uint64
	TXInvalidDescs   uint64
	RXRingFull       uint64 // dropped: the RX ring was full (the reader fell behind)
	RXFillRingEmpty  uint64 // the fill ring was empty when a frame came
	TXRingEmptyDescs uint64 // the kernel found the TX ring empty (in copy mode: at the end of each kick's drain)
	// Counted here.
	RXFrames          uint64 // descriptors Receive returned
	TXFrames          uint64 // frames Transmit queued
	TXCompleted       uint64 // frames the kernel completed
	Kicks             uint64 // sendto calls made to send
	KickBackpressure  uint64 // of which the kernel answered EAGAIN, EBUSY or ENOBUFS
	Wakeups           uint64 // recvfrom calls made because the fill ring asked
	FillShort         uint64 // refills that found the pool short of frames
	TXShort           uint64 // Transmit calls that queued less than asked
	BadDescs          uint64 // descriptors Frame or Release refused
	BudgetUnsupported bool   // the kernel refused XDP_MAX_TX_SKB_BUDGET: copy-mode sendto sends 32 frames at most
}

// Socket is an AF_XDP socket bound to one queue of one interface, with its
// four rings and a FramePool over its UMEM. Frames received are the
// caller's until Release; frames transmitted return to the pool when the
// kernel completes them.
//
// A Socket is not safe for concurrent use: one goroutine drives it (RX and
// TX share the frame pool).
//
// The daemon does not use github.com/asavie/xdp here, although the traffic
// package does: it maps its own UMEM inside NewSocket, so a UMEM over memory
// the caller supplies (a VM's memory for zero-copy mode) is impossible, and
// it panics on sendto errors other than EAGAIN and EBUSY (ENOBUFS, ENETDOWN),
// which must be back-pressure or an error in a daemon, never a crash. What
// is missing is small: the UMEM registration over given memory, the ring
// mappings and the rings' index handling, written here after gVisor's
// pkg/xdp.
type Socket struct {
	fd      int
	ifindex int
	queue   int
	opts    Options
	umem    *UMEM
	pool    *FramePool
	maps    [][]byte // ring mappings

	fill         FillQueue
	rx           RXQueue
	tx           TXQueue
	comp         CompletionQueue
	hasRX, hasTX bool

	fillFrames  int // frames kept in the kernel's hands for RX
	kernelHeld  int // frames given to the fill ring and not yet received
	refillBatch int // refill when at least this many are missing

	scratch     []uint64 // RingSize addresses: refill, completions, TX
	txDescs     []Desc   // RingSize
	outstanding int      // TX frames queued and not completed
	kickPending bool     // the kernel left TX descriptors unsent

	st Stats
}

// Open creates, sets up and binds an AF_XDP socket. It registers no XDP
// program: put FD in an XSKMAP (or call Register) to receive.
func Open(opts Options) (_ *Socket, err error) {
	if opts.UMEM == nil || opts.UMEM.mem == nil {
		return nil, errors.New("AF_XDP socket: no UMEM")
	}
	if opts.RingSize == 0 {
		opts.RingSize = DefaultRingSize
	}
	if opts.RingSize < 1 || opts.RingSize&(opts.RingSize-1) != 0 || opts.RingSize > 1<<20 {
		return nil, fmt.Errorf("AF_XDP ring size %d: want a power of two up to %d", opts.RingSize, 1<<20)
	}
	if opts.Dir == 0 {
		opts.Dir = RXTX
	}
	if opts.Dir&^RXTX != 0 {
		return nil, fmt.Errorf("AF_XDP direction %d: want RX, TX or RXTX", opts.Dir)
	}
	if opts.Queue < 0 {
		return nil, fmt.Errorf("AF_XDP queue %d: negative", opts.Queue)
	}
	if opts.Ifindex == 0 && opts.Ifname == "" {
		return nil, errors.New("AF_XDP socket: no interface (Ifindex or Ifname)")
	}
	if opts.BusyPollBudget == 0 {
		opts.BusyPollBudget = 64
	}
	frames := opts.UMEM.Frames()
	fillMax := 0
	switch opts.Dir {
	case RX:
		fillMax = min(opts.RingSize, frames)
	case RXTX:
		fillMax = min(opts.RingSize, frames/2)
	}
	if opts.FillFrames == 0 || opts.FillFrames > fillMax {
		opts.FillFrames = fillMax
	}
	if opts.Dir&RX != 0 && opts.FillFrames < 1 {
		return nil, fmt.Errorf("AF_XDP socket: UMEM of %d frames leaves none for the fill ring", frames)
	}

	s := &Socket{
		fd: -1, queue: opts.Queue, opts: opts, umem: opts.UMEM,
		hasRX: opts.Dir&RX != 0, hasTX: opts.Dir&TX != 0,
		fillFrames: opts.FillFrames,
		scratch:    make([]uint64, opts.RingSize),
		txDescs:    make([]Desc, opts.RingSize),
	}
	s.refillBatch = max(1, min(64, s.fillFrames/4))
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if s.pool, err = NewFramePool(frames, opts.UMEM.FrameSize()); err != nil {
		return nil, err
	}
	s.fd, s.ifindex, err = openXSK(opts.NetNS, opts.Ifindex, opts.Ifname)
	if err != nil {
		return nil, fmt.Errorf("AF_XDP socket on %s: %w", s.name(), err)
	}
	if err := s.setup(); err != nil {
		return nil, fmt.Errorf("AF_XDP socket on %s: %w", s.name(), err)
	}
	return s, nil
}

func (s *Socket) name() string {
	dev := s.opts.Ifname
	if dev == "" {
		dev = fmt.Sprintf("ifindex %d", s.opts.Ifindex)
	}
	if s.opts.NetNS != "" {
		dev += " in " + s.opts.NetNS
	}
	return fmt.Sprintf("%s queue %d", dev, s.opts.Queue)
}

func (s *Socket) setup() error {
	u, n := s.umem, s.opts.RingSize
	if err := registerUMEM(s.fd, u.mem, uint32(u.frameSize), u.headroom); err != nil {
		return fmt.Errorf("register UMEM (%d frames of %d bytes): %w", u.Frames(), u.frameSize, err)
	}
	// The fill ring has twice the entries of the others. The kernel
	// publishes its fill-ring consumer index lazily: it reads the
	// producer index, takes every entry it saw, and publishes how far it
	// got only when it has run out. So this side cannot tell how many
	// entries the ring still holds; it counts instead the frames the
	// kernel holds (given to the fill ring and not yet received), keeps
	// that at FillFrames (at most RingSize), and needs room for as many
	// again that the kernel took but has not yet published. (xdpsock's
	// default fill ring is also twice its RX ring.) With a fill ring of
	// RingSize and "keep it full", the ring looks full while the kernel
	// empties it, and frames are dropped for want of fill entries while
	// the reader sleeps (seen: hundreds of drops per 5000-frame burst).
	rings := []struct {
		opt, size int
		want      bool
		name      string
	}{
		{unix.XDP_UMEM_FILL_RING, 2 * n, true, "fill"},
		{unix.XDP_UMEM_COMPLETION_RING, n, true, "completion"},
		{unix.XDP_RX_RING, n, s.hasRX, "RX"},
		{unix.XDP_TX_RING, n, s.hasTX, "TX"},
	}
	for _, r := range rings {
		if !r.want {
			continue
		}
		if err := unix.SetsockoptInt(s.fd, unix.SOL_XDP, r.opt, r.size); err != nil {
			return fmt.Errorf("%s ring of %d entries: %w", r.name, r.size, err)
		}
	}
	off, err := mmapOffsets(s.fd)
	if err != nil {
		return fmt.Errorf("ring offsets: %w", err)
	}
	size := uint32(n)
	m, err := s.mmap(unix.XDP_UMEM_PGOFF_FILL_RING, off.Fr, 2*size, addrSize, "fill")
	if err != nil {
		return err
	}
	s.fill.attach(m, off.Fr, 2*size)
	s.fill.addrs = addrRing(m, off.Fr, 2*size)
	if m, err = s.mmap(unix.XDP_UMEM_PGOFF_COMPLETION_RING, off.Cr, size, addrSize, "completion"); err != nil {
		return err
	}
	s.comp.attach(m, off.Cr, size)
	s.comp.addrs = addrRing(m, off.Cr, size)
	if s.hasRX {
		if m, err = s.mmap(unix.XDP_PGOFF_RX_RING, off.Rx, size, descSize, "RX"); err != nil {
			return err
		}
		s.rx.attach(m, off.Rx, size)
		s.rx.descs = descRing(m, off.Rx, size)
	}
	if s.hasTX {
		if m, err = s.mmap(unix.XDP_PGOFF_TX_RING, off.Tx, size, descSize, "TX"); err != nil {
			return err
		}
		s.tx.attach(m, off.Tx, size)
		s.tx.descs = descRing(m, off.Tx, size)
		// Copy mode sends at most 32 frames per sendto unless told
		// otherwise (Linux 6.17+); a batch should cost one kick.
		if err := unix.SetsockoptInt(s.fd, unix.SOL_XDP, unix.XDP_MAX_TX_SKB_BUDGET, n); err != nil {
			s.st.BudgetUnsupported = true
		}
	}
	if s.opts.BusyPoll > 0 {
		for _, o := range []struct {
			opt, val int
			name     string
		}{
			{unix.SO_PREFER_BUSY_POLL, 1, "SO_PREFER_BUSY_POLL"},
			{unix.SO_BUSY_POLL, int(max(1, s.opts.BusyPoll/time.Microsecond)), "SO_BUSY_POLL"},
			{unix.SO_BUSY_POLL_BUDGET, s.opts.BusyPollBudget, "SO_BUSY_POLL_BUDGET"},
		} {
			if err := unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, o.opt, o.val); err != nil {
				return fmt.Errorf("busy polling: %s=%d: %w", o.name, o.val, err)
			}
		}
	}
	// Stock the fill ring before bind, so that the first frames find room.
	s.refill()
	flags := uint16(unix.XDP_COPY)
	if s.opts.ZeroCopy {
		flags = unix.XDP_ZEROCOPY
	}
	if s.opts.NeedWakeup {
		flags |= unix.XDP_USE_NEED_WAKEUP
	}
	sa := &unix.SockaddrXDP{Flags: flags, Ifindex: uint32(s.ifindex), QueueID: uint32(s.queue)}
	// The kernel releases a closed socket's hold on a queue in deferred
	// work, so a socket reopened on the same queue right after (a
	// reconnect, a restart) can see EBUSY for a moment: retry, bounded.
	err = unix.Bind(s.fd, sa)
	for deadline := time.Now().Add(2 * time.Second); errors.Is(err, unix.EBUSY) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		err = unix.Bind(s.fd, sa)
	}
	if err != nil {
		return fmt.Errorf("bind (flags %#x): %w", flags, err)
	}
	return nil
}

// mmap maps one ring and checks that the kernel's offsets lie inside it.
func (s *Socket) mmap(pgoff int64, off unix.XDPRingOffset, entries uint32, entry int, name string) ([]byte, error) {
	length := off.Desc + uint64(entries)*uint64(entry)
	for _, o := range []uint64{off.Producer, off.Consumer, off.Flags} {
		if o+4 > length || o%4 != 0 {
			return nil, fmt.Errorf("%s ring: offsets %+v outside the mapping", name, off)
		}
	}
	m, err := unix.Mmap(s.fd, pgoff, int(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("map %s ring: %w", name, err)
	}
	s.maps = append(s.maps, m)
	return m, nil
}

// FD is the socket's file descriptor, for an XSKMAP.
func (s *Socket) FD() int { return s.fd }

// Ifindex is the interface the socket is bound to.
func (s *Socket) Ifindex() int { return s.ifindex }

// Queue is the queue the socket is bound to.
func (s *Socket) Queue() int { return s.queue }

// UMEM is the socket's UMEM.
func (s *Socket) UMEM() *UMEM { return s.umem }

// Pool is the socket's pool of free frames.
func (s *Socket) Pool() *FramePool { return s.pool }

// Rings returns the four rings, for callers that manage frames themselves
// (for example with descriptors a guest supplied); they bypass the pool and
// the counters, so do not mix them with Receive, Release and Transmit. A
// ring the socket does not have (RX on a TX-only socket) has no entries.
func (s *Socket) Rings() (*FillQueue, *RXQueue, *TXQueue, *CompletionQueue) {
	return &s.fill, &s.rx, &s.tx, &s.comp
}

// Register puts the socket into the XSKMAP m at key (the queue index, for
// programs that redirect by ctx->rx_queue_index).
func (s *Socket) Register(m *ebpf.Map, key uint32) error {
	if err := m.Update(key, uint32(s.fd), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("register AF_XDP socket on %s in XSKMAP at %d: %w", s.name(), key, err)
	}
	return nil
}

// Receive takes up to len(descs) received frames and returns how many. Each
// frame is the caller's (read it with Frame) until Release. Receive keeps
// the fill ring stocked from the pool, in batches. It never blocks (see
// Wait).
func (s *Socket) Receive(descs []Desc) int {
	if !s.hasRX {
		return 0
	}
	n := s.rx.Consume(descs)
	s.kernelHeld -= n
	s.st.RXFrames += uint64(n)
	s.refill()
	return n
}

// Frame returns the bytes of a received (or any) descriptor, or nil if d
// does not lie within one frame of the UMEM.
func (s *Socket) Frame(d Desc) []byte {
	b := s.umem.Frame(d)
	if b == nil {
		s.st.BadDescs++
	}
	return b
}

// Release returns received frames to the pool and refills the fill ring
// from it (in one batch). Descriptors that are not the socket's (outside the
// UMEM, or already released) are skipped and reported.
func (s *Socket) Release(descs []Desc) error {
	bad := 0
	for _, d := range descs {
		if !s.pool.put(d.Addr) {
			bad++
		}
	}
	s.refill()
	if bad > 0 {
		s.st.BadDescs += uint64(bad)
		return fmt.Errorf("release %d of %d descriptors on %s: outside the UMEM or already released", bad, len(descs), s.name())
	}
	return nil
}

// refill gives the kernel frames from the pool through the fill ring until
// it holds fillFrames (in the fill ring, in the RX ring, or in between),
// once at least refillBatch are missing: one atomic publish per batch.
func (s *Socket) refill() {
	if !s.hasRX {
		return
	}
	missing := s.fillFrames - s.kernelHeld
	if missing < s.refillBatch {
		return
	}
	n := s.pool.Get(s.scratch[:missing])
	if n < missing {
		s.st.FillShort++
	}
	// The ring has room for twice fillFrames (see setup), so this takes
	// all n; should it not, the rest go back to the pool.
	p := s.fill.Produce(s.scratch[:n])
	if p < n {
		s.pool.Put(s.scratch[p:n])
	}
	s.kernelHeld += p
	if s.opts.NeedWakeup && s.fill.NeedWakeup() {
		s.wakeRX()
	}
}

func (s *Socket) wakeRX() {
	s.st.Wakeups++
	_, _, _ = unix.Recvfrom(s.fd, nil, unix.MSG_DONTWAIT)
}

// Transmit copies frames, in order, into free UMEM frames, queues them on
// the TX ring and kicks the kernel once. It returns how many it queued:
// fewer than len(frames) when the TX ring or the pool is short (frames come
// back as the kernel completes sends), which is back-pressure, not an error;
// Wait, then send the rest. It first reaps the completion ring into the
// pool. A frame that is empty or larger than UMEM.MaxTXFrame fails the
// whole call, with nothing queued. Frames may lie in memory that can fault
// (a vhost-user guest's, with debug.SetPanicOnFault): should a copy panic,
// the UMEM frames taken for the batch go back to the pool, nothing is
// queued, and the panic goes on.
func (s *Socket) Transmit(frames [][]byte) (int, error) {
	if !s.hasTX {
		return 0, fmt.Errorf("transmit on %s: not a TX socket", s.name())
	}
	maxLen := s.umem.MaxTXFrame()
	for i, f := range frames {
		if len(f) == 0 || len(f) > maxLen {
			return 0, fmt.Errorf("transmit on %s: frame %d has %d bytes, want 1 to %d", s.name(), i, len(f), maxLen)
		}
	}
	s.Complete()
	want := min(len(frames), len(s.scratch))
	n := min(want, s.tx.Free())
	n = s.pool.Get(s.scratch[:n])
	if n < len(frames) {
		s.st.TXShort++
	}
	hr := uint64(s.umem.headroom)
	copied := false
	defer func() {
		if !copied {
			s.pool.Put(s.scratch[:n]) // taken just above: cannot be refused
		}
	}()
	for i, base := range s.scratch[:n] {
		l := copy(s.umem.frameAt(base), frames[i])
		s.txDescs[i] = Desc{Addr: base + hr, Len: uint32(l)}
	}
	copied = true
	s.tx.Produce(s.txDescs[:n])
	s.outstanding += n
	s.st.TXFrames += uint64(n)
	if n == 0 && !s.kickPending {
		return 0, nil
	}
	return n, s.Kick()
}

// Complete moves completed TX frames from the completion ring to the pool
// and returns how many.
func (s *Socket) Complete() int {
	total := 0
	for s.outstanding > 0 {
		n := s.comp.Consume(s.scratch)
		if n == 0 {
			break
		}
		for _, a := range s.scratch[:n] {
			if !s.pool.put(a) {
				s.st.BadDescs++
			}
		}
		s.outstanding -= n
		total += n
	}
	s.st.TXCompleted += uint64(total)
	return total
}

// Outstanding is the number of frames queued for TX and not yet completed.
func (s *Socket) Outstanding() int { return s.outstanding }

// Kick asks the kernel to send what is in the TX ring (sendto with
// MSG_DONTWAIT). In copy mode the kernel sends only from this call (and from
// poll): Transmit kicks once per batch, and Wait kicks again when the kernel
// left descriptors behind. EAGAIN, EBUSY and ENOBUFS mean the device or the
// kernel is busy: Kick counts them and returns nil, and the next Wait kicks
// again.
func (s *Socket) Kick() error {
	if !s.hasTX {
		return nil
	}
	if s.opts.NeedWakeup && !s.tx.NeedWakeup() {
		s.kickPending = false
		return nil
	}
	s.st.Kicks++
	err := unix.Sendto(s.fd, nil, unix.MSG_DONTWAIT, nil)
	switch err {
	case nil:
		s.kickPending = false
		return nil
	case unix.EAGAIN, unix.EBUSY, unix.ENOBUFS, unix.EINTR:
		s.st.KickBackpressure++
		s.kickPending = true
		return nil
	}
	s.kickPending = true
	return fmt.Errorf("kick TX on %s: %w", s.name(), err)
}

// completionPoll bounds a Wait for completions: AF_XDP signals no event when
// a completion arrives, so such a wait polls in short sleeps.
const completionPoll = time.Millisecond

// Wait blocks until a received frame is ready, a sent frame completed (if
// any is outstanding), or timeout passed, in poll(2), without burning a
// core (unless Options.Spin asked for a spin first). It kicks the kernel
// first if it left TX descriptors unsent. A negative timeout waits without
// limit for RX. Wait returns no error for a timeout or a signal.
//
// Where the reader runs matters: the kernel wakes it from the softirq that
// delivered the frames, and on a loaded 2-CPU machine the reader was seen
// to run 3 to 20 ms after frames arrived, time in which 2048 frames fill
// the rings. Size RingSize and FillFrames for the stalls expected, and keep
// the reader off the CPU that serves the queue's interrupts (or busy-poll).
func (s *Socket) Wait(timeout time.Duration) error {
	if s.hasTX && (s.kickPending || s.tx.Pending() > 0) {
		if err := s.Kick(); err != nil {
			return err
		}
	}
	if s.ready() {
		return nil
	}
	if s.opts.Spin > 0 {
		end := time.Now().Add(min(s.opts.Spin, max(timeout, 0)))
		if timeout < 0 {
			end = time.Now().Add(s.opts.Spin)
		}
		for time.Now().Before(end) {
			if s.opts.BusyPoll > 0 {
				_, _, _ = unix.Recvfrom(s.fd, nil, unix.MSG_DONTWAIT) // drive NAPI
			}
			if s.ready() {
				return nil
			}
		}
	}
	var events int16
	if s.hasRX {
		events |= unix.POLLIN
	}
	if s.hasTX && s.tx.Pending() > int(s.tx.size)/2 {
		events |= unix.POLLOUT // the kernel signals when it drained half the ring
	}
	if s.outstanding > 0 && (timeout < 0 || timeout > completionPoll) {
		timeout = completionPoll
	}
	var ts *unix.Timespec
	if timeout >= 0 {
		t := unix.NsecToTimespec(int64(timeout))
		ts = &t
	}
	pfd := []unix.PollFd{{Fd: int32(s.fd), Events: events}}
	if _, err := unix.Ppoll(pfd, ts, nil); err != nil && err != unix.EINTR {
		return fmt.Errorf("poll AF_XDP socket on %s: %w", s.name(), err)
	}
	if pfd[0].Revents&(unix.POLLERR|unix.POLLNVAL) != 0 {
		return fmt.Errorf("poll AF_XDP socket on %s: events %#x", s.name(), pfd[0].Revents)
	}
	return nil
}

// ready reports whether Receive or Complete would find something.
func (s *Socket) ready() bool {
	return (s.hasRX && s.rx.Available() > 0) || (s.outstanding > 0 && s.comp.Available() > 0)
}

// Stats returns the kernel's and the socket's counters.
func (s *Socket) Stats() (Stats, error) {
	st := s.st
	k, err := xdpStatistics(s.fd)
	if err != nil {
		return st, fmt.Errorf("statistics of AF_XDP socket on %s: %w", s.name(), err)
	}
	st.RXDropped, st.RXInvalidDescs, st.TXInvalidDescs = k.Rx_dropped, k.Rx_invalid_descs, k.Tx_invalid_descs
	st.RXRingFull, st.RXFillRingEmpty, st.TXRingEmptyDescs = k.Rx_ring_full, k.Rx_fill_ring_empty_descs, k.Tx_ring_empty_descs
	return st, nil
}

// Close closes the socket (the kernel removes it from XSKMAPs) and unmaps
// its rings. The UMEM stays its owner's. Close may be called more than once.
func (s *Socket) Close() error {
	var errs []error
	// Unmap before close: the kernel frees the rings with the last
	// reference, socket or mapping.
	for _, m := range s.maps {
		if err := unix.Munmap(m); err != nil {
			errs = append(errs, fmt.Errorf("unmap ring: %w", err))
		}
	}
	s.maps = nil
	s.fill, s.rx, s.tx, s.comp = FillQueue{}, RXQueue{}, TXQueue{}, CompletionQueue{}
	s.hasRX, s.hasTX = false, false
	if s.fd >= 0 {
		if err := unix.Close(s.fd); err != nil {
			errs = append(errs, fmt.Errorf("close AF_XDP socket: %w", err))
		}
		s.fd = -1
	}
	return errors.Join(errs...)
}

// openXSK resolves the interface (ifindex, else by name) and creates an
// AF_XDP socket in the network namespace netns: the socket belongs to the
// namespace it is created in, and bind looks the ifindex up there.
func openXSK(netns string, ifindex int, ifname string) (fd, index int, err error) {
	ns, err := hostnet.NewNSRunner(netns)
	if err != nil {
		return -1, 0, err
	}
	defer ns.Close()
	fd, index = -1, ifindex
	err = ns.Do(func() error {
		if index == 0 {
			ifi, err := net.InterfaceByName(ifname)
			if err != nil {
				return err
			}
			index = ifi.Index
		}
		fd, err = unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		return err
	})
	return fd, index, err
}
