// Package bench measures xdp-hostd's dataplane against baselines, side by
// side in one run, and reports ratios. Benchmarks are commands, not tests:
// the machines they run on are shared and noisy.
package bench

import (
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/traffic"
)

// ProgRunResult is the in-kernel cost of one packet through a program,
// measured with BPF_PROG_RUN (no device involved).
type ProgRunResult struct {
	Name     string  `json:"name"`
	NsPerPkt float64 `json:"ns_per_packet"`
	Verdict  uint32  `json:"verdict"`
	Overhead float64 `json:"overhead_ns"` // over the bare XDP_PASS program
}

// progRunNs runs prog repeat times on frame and returns the wall time per run.
// The same method is used for every program compared, so the syscall cost
// (amortized over repeat runs) cancels in the differences.
func progRunNs(prog *ebpf.Program, opts *ebpf.RunOptions) (float64, uint32, error) {
	start := time.Now()
	ret, err := prog.Run(opts)
	if err != nil {
		return 0, 0, err
	}
	return float64(time.Since(start).Nanoseconds()) / float64(opts.Repeat), ret, nil
}

// xdpMD is struct xdp_md as BPF_PROG_RUN takes it for context input.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// DispatchCost measures dispatch + tail call + built-in VM program + host
// epilogue (with tap delivery), matched by dedicated queue and by MAC,
// against a bare XDP_PASS program. rounds alternate the programs so drift in
// machine load hits all of them alike; the median of the rounds is reported.
func DispatchCost(repeat uint32, rounds int) (_ []ProgRunResult, err error) {
	topo, err := hostnet.NewTopology(hostnet.TopologyOptions{Prefix: "xhbd", Queues: 4})
	if err != nil {
		return nil, err
	}
	defer topo.Close()
	dp, err := hostnet.Open(hostnet.Config{Uplink: topo.Uplink, NetNS: topo.HostNS})
	if err != nil {
		return nil, err
	}
	defer dp.Close()
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 0x42}
	if _, err := dp.AddVM(hostnet.VMSpec{Name: "bench", MAC: mac, Queues: []int{1}}); err != nil {
		return nil, err
	}

	bare, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "bare_pass", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
	})
	if err != nil {
		return nil, fmt.Errorf("load bare XDP_PASS program: %w", err)
	}
	defer bare.Close()

	frame := make([]byte, 64)
	spec := traffic.FrameSpec{Dst: mac, Src: topo.WireMAC, Size: 64, Tag: 1}
	if _, err := spec.Build(frame, 0); err != nil {
		return nil, err
	}
	_, uplinkIndex, _ := dp.Uplink()
	byQueue := xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(uplinkIndex), RxQueueIndex: 1}

	type variant struct {
		name string
		prog *ebpf.Program
		ctx  any
	}
	variants := []variant{
		{"bare XDP_PASS", bare, nil},
		{"dispatch by MAC -> VM program -> epilogue", dp.DispatchProgram(), nil},
		{"dispatch by queue -> VM program -> epilogue", dp.DispatchProgram(), &byQueue},
	}
	samples := make([][]float64, len(variants))
	verdicts := make([]uint32, len(variants))
	for r := 0; r < rounds; r++ {
		for i, v := range variants {
			var ns float64
			err := dp.NS().Do(func() (err error) {
				ns, verdicts[i], err = progRunNs(v.prog, &ebpf.RunOptions{Data: frame, Context: v.ctx, Repeat: repeat})
				return err
			})
			if err != nil {
				return nil, fmt.Errorf("run %s: %w", v.name, err)
			}
			samples[i] = append(samples[i], ns)
		}
	}
	out := make([]ProgRunResult, len(variants))
	for i, v := range variants {
		out[i] = ProgRunResult{Name: v.name, NsPerPkt: median(samples[i]), Verdict: verdicts[i]}
		out[i].Overhead = out[i].NsPerPkt - median(samples[0])
	}
	return out, nil
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}
