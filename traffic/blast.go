package traffic

import (
	"fmt"
	"net"
	"runtime"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// BlastOptions configure Blast.
type BlastOptions struct {
	// Rate, if positive, paces the frames at about this many per second:
	// they go out in runs of Chunk frames (default 256), with sleeps in
	// between. Zero sends as fast as the kernel takes them.
	Rate   float64
	Chunk  uint32
	NetNS  string // namespace of Ifname; "" for the caller's
	Ifname string // the wire-side veth: frames go out of it into its peer
	Frame  []byte // the frame, 14 bytes up to about 3.5 KiB (a page less headroom)
	Count  uint32 // frames to send
	// CPU to pin the sending thread to, which also decides the peer's RX
	// queue (CPU % queues); -1 for no pinning. Note 0 means CPU 0.
	CPU int
	// BatchSize is the kernel's live-frames batch (frames allocated and sent
	// per batch); 0 for the kernel's default (64).
	BatchSize uint32
}

// BlastResult says how fast the sending core pushed frames into the peer.
type BlastResult struct {
	Sent    uint64        // frames of the completed run
	Elapsed time.Duration // wall time of the completed run
	// CPU is the CPU the run was pinned to, or (unpinned) the one it started on.
	CPU int
	// CPUTime is the sending thread's CPU time during the run. The peer's
	// NAPI poll (and its XDP program) runs in softirq on the same CPU, partly
	// in this thread (charged to it, unless the kernel accounts IRQ time
	// apart) and partly in ksoftirqd (not charged): Elapsed of a pinned run,
	// not CPUTime, is the cost of the one core doing both.
	CPUTime time.Duration
	// Restarts counts runs interrupted by a signal and started over: each
	// sent an unknown part of Count before Sent and Elapsed were measured,
	// so a receiver may count more than Sent frames.
	Restarts int
}

// PPS is the send rate in frames per second.
func (r BlastResult) PPS() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Sent) / r.Elapsed.Seconds()
}

// xdpMD is struct xdp_md, BPF_PROG_RUN's context input.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// Blast sends Count copies of Frame out of Ifname with BPF_PROG_RUN in live
// frames mode (BPF_F_TEST_XDP_LIVE_FRAMES): an XDP program returning XDP_TX
// (xh_live_tx in traffic.c) runs once per frame as if Ifname had received it
// on RX queue 0, so each frame is transmitted into the veth peer, all in the
// kernel, from one thread locked inside the namespace (the kernel resolves
// the ingress ifindex in the caller's namespace).
//
// Limits of the mechanism:
//   - veth's ndo_xdp_xmit requires the peer to have NAPI receive queues (an
//     XDP program attached, or GRO on); without them the frames are dropped
//     (and counted in the wire veth's TX drops).
//   - The frames land on the peer's RX queue smp_processor_id() % queues,
//     the sending CPU's: XDP-transmitted frames cannot be aimed at an
//     arbitrary queue. Pin with CPU to choose among the first runtime.NumCPU()
//     queues; use a Sender to aim at any queue.
//   - The peer's NAPI poll runs in softirq on the sending CPU, so the rate is
//     that of sender and receiver on one core.
//   - Frames the peer's ring has no room for are dropped, not retried.
func Blast(opts BlastOptions) (BlastResult, error) {
	if len(opts.Frame) < 14 {
		return BlastResult{}, fmt.Errorf("blast frame of %d bytes: at least 14", len(opts.Frame))
	}
	if opts.Count == 0 {
		return BlastResult{}, fmt.Errorf("blast: Count is 0")
	}
	if opts.CPU >= runtime.NumCPU() {
		return BlastResult{}, fmt.Errorf("blast on CPU %d: this machine has %d", opts.CPU, runtime.NumCPU())
	}
	var progs struct {
		Prog *ebpf.Program `ebpf:"xh_live_tx"`
	}
	spec, err := loadTraffic()
	if err != nil {
		return BlastResult{}, err
	}
	if err := spec.LoadAndAssign(&progs, nil); err != nil {
		return BlastResult{}, fmt.Errorf("load XDP_TX program: %w", err)
	}
	defer progs.Prog.Close()

	res := BlastResult{CPU: opts.CPU}
	err = inNS(opts.NetNS, func() error {
		// inNS locked the thread (for a namespace); lock it in any case,
		// for the affinity and the thread CPU time.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		ifi, err := net.InterfaceByName(opts.Ifname)
		if err != nil {
			return fmt.Errorf("blast interface %s: %w", opts.Ifname, err)
		}
		if opts.CPU >= 0 {
			var set, old unix.CPUSet
			if err := unix.SchedGetaffinity(0, &old); err != nil {
				return fmt.Errorf("get CPU affinity: %w", err)
			}
			defer unix.SchedSetaffinity(0, &old)
			set.Set(opts.CPU)
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				return fmt.Errorf("pin to CPU %d: %w", opts.CPU, err)
			}
		} else {
			res.CPU = getcpu()
		}
		var start time.Time
		var cpu0 time.Duration
		mark := func() { start, cpu0 = time.Now(), threadCPU() }
		run := func(n uint32, reset func()) error {
			_, err := progs.Prog.Run(&ebpf.RunOptions{
				Data:      opts.Frame,
				Context:   xdpMD{DataEnd: uint32(len(opts.Frame)), IngressIfindex: uint32(ifi.Index)},
				Repeat:    n,
				Flags:     unix.BPF_F_TEST_XDP_LIVE_FRAMES,
				BatchSize: opts.BatchSize,
				Reset:     reset,
			})
			return err
		}
		mark()
		if opts.Rate <= 0 {
			// Called when a signal interrupted the run, before it starts
			// over: measure the complete run only.
			err = run(opts.Count, func() { res.Restarts++; mark() })
		} else {
			chunk := opts.Chunk
			if chunk == 0 {
				chunk = 256
			}
			for sent := uint32(0); sent < opts.Count && err == nil; {
				n := min(chunk, opts.Count-sent)
				// A restarted chunk sends its frames again: counted.
				err = run(n, func() { res.Restarts++ })
				sent += n
				if ahead := time.Duration(float64(sent)/opts.Rate*float64(time.Second)) - time.Since(start); ahead > 0 {
					time.Sleep(ahead)
				}
			}
		}
		res.Elapsed = time.Since(start)
		res.CPUTime = threadCPU() - cpu0
		if err != nil {
			return fmt.Errorf("BPF_PROG_RUN live frames on %s: %w", opts.Ifname, err)
		}
		res.Sent = uint64(opts.Count)
		return nil
	})
	return res, err
}

// threadCPU is the calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID: the
// scheduler's precise runtime, not getrusage's tick-sampled split).
func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// getcpu is the CPU the calling thread runs on, or -1.
func getcpu() int {
	var cpu uint32
	if _, _, errno := unix.RawSyscall(unix.SYS_GETCPU, uintptr(unsafe.Pointer(&cpu)), 0, 0); errno != 0 {
		return -1
	}
	return int(cpu)
}
