package traffic

import (
	"fmt"
	"net"
	"runtime"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
)

// BlastOptions configure Blast.
type BlastOptions struct {
	NetNS  string // namespace of Ifname; "" for the caller's
	Ifname string // the wire-side veth: frames go out of it into its peer
	Frame  []byte // the frame, at least 14 bytes
	Count  uint32 // frames to send
	CPU    int    // CPU to run on (and so the peer's RX queue: CPU % queues); -1 for any
}

// BlastResult says how fast the sending core pushed frames into the peer.
type BlastResult struct {
	Sent    uint64
	Elapsed time.Duration
	CPU     int
}

// xdpMD is struct xdp_md, BPF_PROG_RUN's context input.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

const bpfFTestXDPLiveFrames = 1 << 1 // BPF_F_TEST_XDP_LIVE_FRAMES

// Blast sends Count copies of Frame out of Ifname with BPF_PROG_RUN in live
// frame mode: a program returning XDP_TX runs once per frame as if Ifname had
// received it, so each frame is transmitted into the veth peer, all in the
// kernel. The elapsed time is the sending core's kernel-side cost, which
// includes everything the receiving side does in the same softirq (for a
// veth peer: its XDP program and what that program's verdict triggers).
//
// The peer must have NAPI receive queues (an XDP program attached, or GRO
// on), or the frames are dropped.
func Blast(opts BlastOptions) (BlastResult, error) {
	if len(opts.Frame) < 14 {
		return BlastResult{}, fmt.Errorf("blast frame of %d bytes: at least 14", len(opts.Frame))
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "xh_blast_tx", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 3 /* XDP_TX */), asm.Return()},
	})
	if err != nil {
		return BlastResult{}, fmt.Errorf("load XDP_TX program: %w", err)
	}
	defer prog.Close()
	ns, err := hostnet.NewNSRunner(opts.NetNS)
	if err != nil {
		return BlastResult{}, err
	}
	defer ns.Close()

	res := BlastResult{CPU: opts.CPU}
	err = ns.Do(func() error {
		ifi, err := net.InterfaceByName(opts.Ifname)
		if err != nil {
			return fmt.Errorf("blast interface %s: %w", opts.Ifname, err)
		}
		if opts.CPU >= 0 && opts.CPU < runtime.NumCPU() {
			var set, old unix.CPUSet
			if err := unix.SchedGetaffinity(0, &old); err == nil {
				defer unix.SchedSetaffinity(0, &old)
			}
			set.Set(opts.CPU)
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				return fmt.Errorf("pin to CPU %d: %w", opts.CPU, err)
			}
		}
		start := time.Now()
		_, err = prog.Run(&ebpf.RunOptions{
			Data:      opts.Frame,
			Context:   xdpMD{DataEnd: uint32(len(opts.Frame)), IngressIfindex: uint32(ifi.Index)},
			Repeat:    opts.Count,
			Flags:     bpfFTestXDPLiveFrames,
			BatchSize: 64,
		})
		res.Elapsed = time.Since(start)
		if err != nil {
			return fmt.Errorf("BPF_PROG_RUN live frames on %s: %w", opts.Ifname, err)
		}
		res.Sent = uint64(opts.Count)
		return nil
	})
	return res, err
}
