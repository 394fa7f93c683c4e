package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/xdp-hostd/xdp-hostd/guestprog"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/testpmd"
	"github.com/xdp-hostd/xdp-hostd/traffic"
	"github.com/xdp-hostd/xdp-hostd/vmport"
)

// VhostOptions configure Vhost; zero values are defaults.
type VhostOptions struct {
	// Rates are the offered rates in packets per second; 0 means as fast as
	// the source goes. Default 100k, 300k, 1M and max.
	Rates   []float64
	Packets int // per rate; default 300,000
	// Burst is the frames per live-frames run when paced (each run goes
	// out as fast as the kernel goes); default max(4096, rate/50), 20 ms
	// of frames. A zero-copy guest has only its own RX buffers (1024
	// here, QEMU's most) to absorb a run.
	Burst uint32
	// NoTestpmd skips the testpmd af_xdp -> vhost path; NoTap the XDP tap
	// path.
	NoTestpmd, NoTap bool
	// Modes are the delivery modes of xdp-hostd's port measured into the
	// Go sink (vmport.ModeCopy, vmport.ModeZeroCopy); default both. The
	// zero-copy column fails unless the port really is in zero-copy mode.
	Modes []string
	// BusyPoll is xdp-hostd's vmport.Config.BusyPoll (0: event-driven).
	BusyPoll time.Duration
	// CPUProfile, if set, gets a Go CPU profile of the first xdp-hostd
	// path into the Go sink (the first of Modes) while it runs.
	CPUProfile io.Writer
	// TX, if set, receives the guest -> wire measurement (xdp-hostd only).
	TX       *TXPoint
	Progress io.Writer

	// For tests: the xdp-hostd path's topology prefix (default "xhbvx"),
	// and a Go sink whose memory cannot be sealed.
	prefix       string
	unsealedSink bool
}

// VhostPoint is one path at one offered rate.
type VhostPoint struct {
	Path         string  `json:"path"`
	OfferedPPS   float64 `json:"offered_pps"` // 0: unpaced
	SentPPS      float64 `json:"sent_pps"`    // what the source achieved
	Sent         uint64  `json:"sent"`
	Delivered    uint64  `json:"delivered"` // what the virtio front-end received
	DeliveredPPS float64 `json:"delivered_pps"`
	Loss         float64 `json:"loss"`
	// SwitchCPUPerM is the CPU time of the forwarding party (xdp-hostd's
	// receive thread, or testpmd's forwarding process) per million
	// delivered packets. The kernel's share (XDP, AF_XDP) runs in the
	// source's softirq on its CPU for both paths and is not in it.
	SwitchCPUPerM time.Duration `json:"switch_cpu_per_mpkt"`
	// ForwarderNsPerFrame is the same in ns per delivered frame.
	ForwarderNsPerFrame float64 `json:"forwarder_ns_per_frame"`
	// Accounting says where every frame went (xdp-hostd path only).
	Accounting *Accounting `json:"accounting,omitempty"`
}

// VhostResult is the whole benchmark.
type VhostResult struct {
	Points    []VhostPoint `json:"points"`
	Placement string       `json:"placement"`
	Tap       *PathResult  `json:"xdp_tap,omitempty"` // the XDP tap path, unpaced
	TX        *TXPoint     `json:"tx,omitempty"`      // guest -> wire through xdp-hostd
	Ratios    []Ratio      `json:"ratios"`
}

const (
	vhostSourceCPU = 0 // the live-frames source and the uplink's softirq
	vhostSwitchCPU = 1 // the forwarding party and the sink
)

var vhostVMMAC = net.HardwareAddr{0x02, 0, 0, 0, 0x0c, 0x01}

// Vhost compares, on one veth topology with the same source (BPF_PROG_RUN
// live frames) and the same sink (testpmd virtio-user, rxonly), xdp-hostd
// (dispatcher + VM program -> AF_XDP copy mode -> vhost-user) against DPDK
// testpmd forwarding net_af_xdp -> net_vhost (the OVS-DPDK-style path).
func Vhost(ctx context.Context, opts VhostOptions) (*VhostResult, error) {
	if len(opts.Rates) == 0 {
		opts.Rates = []float64{300e3, 1e6, 2e6, 0}
	}
	if opts.Packets == 0 {
		opts.Packets = 300000
	}
	progress := func(format string, args ...any) {
		if opts.Progress != nil {
			fmt.Fprintf(opts.Progress, "bench: "+format+"\n", args...)
		}
	}
	res := &VhostResult{Placement: fmt.Sprintf("placement: the source (BPF_PROG_RUN live frames pinned to CPU %d, paced in runs of %s, with the uplink's XDP and AF_XDP work in its softirq); "+
		"the forwarding party (xdp-hostd's receive thread, or testpmd's lcores) and the sink on CPU %d: for \"xdp-hostd\" and \"xdp-hostd zero-copy\" the Go sink (a virtio front-end waiting on the call eventfd, 1024-entry RX ring; for zero-copy its memory is a sealable memfd and its 1024 buffers are all the kernel can write into), "+
		"otherwise testpmd virtio-user rxonly (two polling lcores, whose printed count lags: a floor). "+
		"testpmd polls, so its forwarder ns/frame is its whole CPU time over the run", vhostSourceCPU, burstName(opts.Burst), vhostSwitchCPU)}
	opts.TX = &TXPoint{}
	if len(opts.Modes) == 0 {
		opts.Modes = []string{vmport.ModeCopy, vmport.ModeZeroCopy}
	}
	type benchPath struct {
		name string
		run  func(context.Context, VhostOptions, func(string, ...any)) ([]VhostPoint, error)
	}
	var paths []benchPath
	for _, m := range opts.Modes {
		switch m {
		case vmport.ModeCopy:
			paths = append(paths, benchPath{pathCopy, vhostXDPHostd})
		case vmport.ModeZeroCopy:
			paths = append(paths, benchPath{pathZeroCopy, vhostXDPHostdZeroCopy})
		default:
			return nil, fmt.Errorf("bench vhost: mode %q: want %q or %q", m, vmport.ModeCopy, vmport.ModeZeroCopy)
		}
	}
	if !opts.NoTestpmd {
		paths = append(paths, benchPath{pathTestpmd, vhostDPDK}, benchPath{pathTestpmdSink, vhostXDPHostdTestpmdSink})
	}
	for _, path := range paths {
		progress("%s: %d packets at each of %v pps (0 = unpaced)", path.name, opts.Packets, opts.Rates)
		pts, err := path.run(ctx, opts, progress)
		if path.name == pathCopy || path.name == pathZeroCopy {
			opts.CPUProfile = nil // one profile: of the first Go-sink path
		}
		for i := range pts {
			pts[i].Path = path.name
		}
		res.Points = append(res.Points, pts...)
		if err != nil {
			return res, fmt.Errorf("%s: %w", path.name, err)
		}
	}
	if opts.TX.Frames > 0 {
		res.TX = opts.TX
	}
	if !opts.NoTap {
		// The XDP tap path in the same run: unpaced live frames, one
		// read() per frame from the tap on the forwarder's CPU.
		progress("XDP tap path: %d packets unpaced", opts.Packets)
		tp, err := xdpTapPath(ctx, opts.Packets)
		if err != nil {
			return res, fmt.Errorf("XDP tap path: %w", err)
		}
		res.Tap = &tp
	}
	res.Ratios = vhostRatios(res, opts.Rates)
	return res, nil
}

// Path names of VhostPoint.Path.
const (
	pathCopy        = "xdp-hostd"
	pathZeroCopy    = "xdp-hostd zero-copy"
	pathTestpmd     = "testpmd af_xdp->vhost"
	pathTestpmdSink = "xdp-hostd, testpmd sink"
)

// vhostRatios compares the paths measured side by side at each rate.
func vhostRatios(res *VhostResult, rates []float64) []Ratio {
	var out []Ratio
	find := func(path string, rate float64) *VhostPoint {
		for i := range res.Points {
			if p := &res.Points[i]; p.Path == path && p.OfferedPPS == rate {
				return p
			}
		}
		return nil
	}
	rateLabel := func(rate float64) string {
		if rate > 0 {
			return fmt.Sprintf("%.0fk pps offered", rate/1e3)
		}
		return "unpaced"
	}
	pps := func(x, d *VhostPoint) string {
		return fmt.Sprintf("%.2fx (%.0f vs %.0f; loss %.1f%% vs %.1f%%)", x.DeliveredPPS/max(d.DeliveredPPS, 1), x.DeliveredPPS, d.DeliveredPPS, 100*x.Loss, 100*d.Loss)
	}
	cpu := func(x, d *VhostPoint) string {
		return fmt.Sprintf("%.3fx (%.0f vs %.0f ns)", x.ForwarderNsPerFrame/d.ForwarderNsPerFrame, x.ForwarderNsPerFrame, d.ForwarderNsPerFrame)
	}
	if tp := res.Tap; tp != nil {
		if x := find(pathCopy, 0); x != nil {
			out = append(out, Ratio{Name: "delivered pps unpaced, vhost-user / XDP tap reader",
				Value: fmt.Sprintf("%.2fx (%.0f vs %.0f; loss %.1f%% vs %.1f%%)", x.DeliveredPPS/max(tp.ReaderMpps*1e6, 1), x.DeliveredPPS, tp.ReaderMpps*1e6, 100*x.Loss, 100*tp.Loss)})
		}
	}
	for _, rate := range rates {
		rl := rateLabel(rate)
		if z, c := find(pathZeroCopy, rate), find(pathCopy, rate); z != nil && c != nil {
			out = append(out, Ratio{Name: "delivered pps, xdp-hostd zero-copy / copy (Go sink), " + rl, Value: pps(z, c)})
			if z.ForwarderNsPerFrame > 0 && c.ForwarderNsPerFrame > 0 {
				out = append(out, Ratio{Name: "forwarder CPU per frame, xdp-hostd zero-copy / copy, " + rl, Value: cpu(z, c)})
			}
		}
		d := find(pathTestpmd, rate)
		if d == nil {
			continue
		}
		for _, c := range []struct{ path, name string }{
			{pathCopy, "xdp-hostd (Go sink)"}, {pathZeroCopy, "xdp-hostd zero-copy (Go sink)"}, {pathTestpmdSink, "xdp-hostd (testpmd sink, as testpmd's)"},
		} {
			x := find(c.path, rate)
			if x == nil {
				continue
			}
			v := pps(x, d)
			if d.DeliveredPPS == 0 {
				v = fmt.Sprintf("n/a: testpmd's sink counted nothing (%.0f vs 0)", x.DeliveredPPS)
			}
			out = append(out, Ratio{Name: "delivered pps, " + c.name + " / testpmd af_xdp->vhost, " + rl, Value: v})
			if x.SwitchCPUPerM > 0 && d.SwitchCPUPerM > 0 {
				out = append(out, Ratio{Name: "forwarder CPU per frame, " + c.name + " / testpmd, " + rl, Value: cpu(x, d)})
			}
		}
	}
	return out
}

func burstName(b uint32) string {
	if b > 0 {
		return fmt.Sprintf("%d frames", b)
	}
	return "20 ms of frames (at least 4096)"
}

func benchFrame() []byte {
	f := make([]byte, 64)
	spec := traffic.FrameSpec{Dst: vhostVMMAC, Src: net.HardwareAddr{0x02, 0x58, 0x48, 0, 0, 2}, Size: 64, Tag: 1}
	spec.Build(f, 0)
	return f
}

// sink starts testpmd as the VM's virtio front-end on sock (rxonly) and
// waits until it forwards.
func sink(sock, prefix string) (*testpmd.Proc, error) {
	pmd, err := testpmd.Start(testpmd.Options{
		Vdevs:  []string{fmt.Sprintf("net_virtio_user0,path=%s,queues=1,mac=%s", sock, vhostVMMAC)},
		Mode:   "rxonly",
		Lcores: fmt.Sprintf("0@%d,1@%d", vhostSwitchCPU, vhostSwitchCPU),
		Prefix: prefix,
	})
	if err != nil {
		return nil, err
	}
	if err := waitOutput(pmd, "NIC statistics", 30*time.Second); err != nil {
		pmd.Stop()
		return nil, err
	}
	return pmd, nil
}

func waitOutput(p *testpmd.Proc, s string, d time.Duration) error {
	for deadline := time.Now().Add(d); !strings.Contains(p.Output(), s); {
		if time.Now().After(deadline) {
			return fmt.Errorf("testpmd did not get going within %v:\n%s", d, lastLines(p.Output(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}

// measureRates sends opts.Packets at each rate and reads what the sink got
// and what the switch's CPU time did. With snap (the xdp-hostd path) it
// also accounts for every frame, and fails when the columns do not add up.
func measureRates(ctx context.Context, opts VhostOptions, topo *hostnet.Topology, sinkCount func() uint64, sinkLags bool, cpu func() time.Duration, snap func() (snapshot, error)) ([]VhostPoint, error) {
	frame := benchFrame()
	var pts []VhostPoint
	for _, rate := range opts.Rates {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		rx0 := sinkCount()
		var s0 snapshot
		if snap != nil {
			var err error
			if s0, err = snap(); err != nil {
				return nil, err
			}
		}
		cpu0 := cpu()
		// Live frames from CPU vhostSourceCPU, paced in long runs (each
		// BPF_PROG_RUN sets up a page pool): a run is 20 ms of frames at
		// the rate, sent as fast as the kernel goes.
		bo := traffic.BlastOptions{NetNS: topo.WireNS, Ifname: topo.Wire, Frame: frame, Count: uint32(opts.Packets), CPU: vhostSourceCPU}
		if rate > 0 {
			bo.Rate, bo.Chunk = rate, uint32(max(4096, rate/50))
			if opts.Burst > 0 {
				bo.Chunk = opts.Burst
			}
		}
		br, err := traffic.Blast(bo)
		if err != nil {
			return nil, err
		}
		sent, elapsed := br.Sent, br.Elapsed
		rx1 := sinkCount()
		used := cpu() - cpu0
		p := VhostPoint{OfferedPPS: rate, Sent: sent, Delivered: rx1 - rx0}
		if snap != nil {
			s1, err := snap()
			if err != nil {
				return nil, err
			}
			acc := account(sent, s0, s1, rx1-rx0)
			acc.SourceRestarts, acc.SinkLags = br.Restarts, sinkLags
			p.Accounting = &acc
			p.Delivered = acc.Delivered
			p.Sent = acc.Sent // the kernel's count (see Accounting)
		}
		if elapsed > 0 {
			p.SentPPS = float64(sent) / elapsed.Seconds()
			p.DeliveredPPS = float64(p.Delivered) / elapsed.Seconds()
		}
		if p.Sent > 0 {
			p.Loss = 1 - float64(p.Delivered)/float64(p.Sent)
		}
		if p.Delivered > 0 {
			p.SwitchCPUPerM = time.Duration(float64(used) * 1e6 / float64(p.Delivered))
			p.ForwarderNsPerFrame = float64(used.Nanoseconds()) / float64(p.Delivered)
		}
		pts = append(pts, p)
		if p.Accounting != nil {
			if err := p.Accounting.check(); err != nil {
				return pts, fmt.Errorf("at %s pps offered: %w", rateName(rate), err)
			}
		}
	}
	return pts, nil
}

// settledRX waits until the sink's received count stops moving (its report
// comes every second) and returns it.
func settledRX(p *testpmd.Proc) uint64 {
	last, _ := p.Stats()
	for i := 0; i < 10; i++ {
		time.Sleep(1100 * time.Millisecond)
		rx, _ := p.Stats()
		if rx == last {
			return rx
		}
		last = rx
	}
	return last
}

func vhostXDPHostd(ctx context.Context, opts VhostOptions, progress func(string, ...any)) ([]VhostPoint, error) {
	return xdpHostdPath(ctx, opts, false, vmport.ModeCopy)
}

// vhostXDPHostdZeroCopy is the port in zero-copy mode into the Go sink,
// whose memory is a sealable memfd (as QEMU's memory-backend-memfd): the
// port seals it against shrinking and registers it as the AF_XDP UMEM.
func vhostXDPHostdZeroCopy(ctx context.Context, opts VhostOptions, progress func(string, ...any)) ([]VhostPoint, error) {
	opts.TX = nil // guest -> wire is measured in copy mode
	return xdpHostdPath(ctx, opts, false, vmport.ModeZeroCopy)
}

func vhostXDPHostdTestpmdSink(ctx context.Context, opts VhostOptions, progress func(string, ...any)) ([]VhostPoint, error) {
	return xdpHostdPath(ctx, opts, true, vmport.ModeCopy)
}

// xdpHostdPath measures xdp-hostd's vhost-user port, into the Go sink or
// testpmd's.
func xdpHostdPath(ctx context.Context, opts VhostOptions, testpmdSink bool, mode string) ([]VhostPoint, error) {
	zc := mode == vmport.ModeZeroCopy
	prefix := opts.prefix
	if prefix == "" {
		prefix = "xhbvx"
	}
	topo, err := hostnet.NewTopology(hostnet.TopologyOptions{Prefix: prefix, Queues: 2})
	if err != nil {
		return nil, err
	}
	defer topo.Close()
	dp, err := hostnet.Open(hostnet.Config{Uplink: topo.Uplink, NetNS: topo.HostNS})
	if err != nil {
		return nil, err
	}
	defer dp.Close()
	// The source's frames arrive on uplink queue CPU % 2 = 0.
	vm, err := dp.AddVM(hostnet.VMSpec{Name: "bench", MAC: vhostVMMAC, Queues: []int{vhostSourceCPU}, Delivery: guestprog.DeliverXSK})
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "xdp-hostd-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	port, err := vmport.Open(vmport.Config{VM: vm, Socket: filepath.Join(dir, "vm.sock"), NetNS: topo.HostNS, RXAffinity: []int{vhostSwitchCPU}, BusyPoll: opts.BusyPoll, Mode: mode})
	if err != nil {
		return nil, err
	}
	defer port.Close()
	sinkCount := func() uint64 { return 0 }
	var gs *goSink
	if testpmdSink {
		pmd, err := sink(filepath.Join(dir, "vm.sock"), "xhbvxs")
		if err != nil {
			return nil, err
		}
		defer pmd.Stop()
		sinkCount = func() uint64 { return settledRX(pmd) }
	} else {
		if gs, err = startGoSink(filepath.Join(dir, "vm.sock"), vhostSwitchCPU, zc && !opts.unsealedSink); err != nil {
			return nil, err
		}
		defer gs.close()
		sinkCount = gs.settled
		for deadline := time.Now().Add(10 * time.Second); !port.Device().Ready(0); {
			if time.Now().After(deadline) {
				return nil, errors.New("the Go sink's queues did not start")
			}
			time.Sleep(10 * time.Millisecond)
		}
		if zc {
			if err := waitZeroCopy(port); err != nil {
				return nil, err
			}
		}
	}
	if opts.CPUProfile != nil && !testpmdSink {
		if err := pprof.StartCPUProfile(opts.CPUProfile); err != nil {
			return nil, err
		}
		defer pprof.StopCPUProfile()
	}
	pts, err := measureRates(ctx, opts, topo, sinkCount, testpmdSink, func() time.Duration { return port.Stats().RXCPU },
		func() (snapshot, error) { return takeSnapshot(topo, dp, vm, port, zc) })
	if err == nil && gs != nil {
		err = gs.err()
	}
	if err == nil && zc {
		err = zeroCopyStill(port)
	}
	if err == nil && gs != nil && opts.TX != nil {
		*opts.TX, err = measureTX(topo, port, gs, min(opts.Packets, 1000000))
	}
	return pts, err
}

// waitZeroCopy waits (at most 10 s) until the port's pair is in zero-copy
// mode and the kernel holds guest buffers; it fails, with the port's
// reason, when the port fell back to copy.
func waitZeroCopy(port *vmport.Port) error {
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st := port.ZeroCopy()
		if len(st.Active) > 0 && st.Active[0] && st.Stats.Posted > 0 {
			return nil
		}
		if st.Fallback != "" || time.Now().After(deadline) {
			return fmt.Errorf("ZERO-COPY NOT ACTIVE: the port stayed in copy mode (fallback: %q, status %+v)", st.Fallback, st)
		}
	}
}

// zeroCopyStill fails unless the port is still in zero-copy mode with an
// intact RX virtqueue.
func zeroCopyStill(port *vmport.Port) error {
	st := port.ZeroCopy()
	if len(st.Active) == 0 || !st.Active[0] || st.QueueBroken != "" {
		return fmt.Errorf("ZERO-COPY NOT ACTIVE after the run (fallback %q, queue broken %q, status %+v)", st.Fallback, st.QueueBroken, st)
	}
	return nil
}

func vhostDPDK(ctx context.Context, opts VhostOptions, progress func(string, ...any)) ([]VhostPoint, error) {
	topo, err := hostnet.NewTopology(hostnet.TopologyOptions{Prefix: "xhbvd", Queues: 2})
	if err != nil {
		return nil, err
	}
	defer topo.Close()
	dir, err := os.MkdirTemp("", "xdp-hostd-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "vm.sock")
	// testpmd must run in the uplink's namespace for net_af_xdp.
	fwd, err := testpmd.Start(testpmd.Options{
		Netns: topo.HostNS,
		Vdevs: []string{
			fmt.Sprintf("net_af_xdp0,iface=%s,start_queue=%d,queue_count=1", topo.Uplink, vhostSourceCPU),
			fmt.Sprintf("net_vhost0,iface=%s,queues=1", sock),
		},
		Mode:   "io",
		Lcores: fmt.Sprintf("0@%d,1@%d", vhostSwitchCPU, vhostSwitchCPU),
		Prefix: "xhbvdf",
	})
	if err != nil {
		return nil, err
	}
	defer fwd.Stop()
	for deadline := time.Now().Add(30 * time.Second); ; {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("testpmd's vhost socket did not appear:\n%s", lastLines(fwd.Output(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
	pmd, err := sink(sock, "xhbvds")
	if err != nil {
		return nil, err
	}
	defer pmd.Stop()
	if err := waitOutput(fwd, "NIC statistics", 30*time.Second); err != nil {
		return nil, err
	}
	return measureRates(ctx, opts, topo, func() uint64 { return settledRX(pmd) }, true, func() time.Duration { return procCPU(fwd.Pid()) }, nil)
}

// procCPU is a process's user+system CPU time from /proc.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command's closing parenthesis; utime and stime are
	// fields 14 and 15 of the whole line.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	const hz = 100 // USER_HZ
	return time.Duration(ut+st) * time.Second / hz
}

func rateName(pps float64) string {
	if pps > 0 {
		return fmt.Sprintf("%.0f", pps)
	}
	return "unpaced"
}

// measureTX has the Go front-end transmit n frames from the VM's MAC and
// counts what the port sent and what reached the wire.
func measureTX(topo *hostnet.Topology, port *vmport.Port, gs *goSink, n int) (TXPoint, error) {
	frame := make([]byte, 64)
	spec := traffic.FrameSpec{Dst: topo.WireMAC, Src: vhostVMMAC, Size: 64, Tag: 2}
	if _, err := spec.Build(frame, 0); err != nil {
		return TXPoint{}, err
	}
	_, _, _, rx0, err := linkCounts(topo.WireNS, topo.Wire)
	if err != nil {
		return TXPoint{}, err
	}
	st0 := port.Stats()
	elapsed := gs.transmit(n, vhostSwitchCPU, frame)
	time.Sleep(200 * time.Millisecond) // completions, the wire's counters
	_, _, _, rx1, err := linkCounts(topo.WireNS, topo.Wire)
	if err != nil {
		return TXPoint{}, err
	}
	st1 := port.Stats()
	p := TXPoint{Frames: uint64(n), Elapsed: elapsed, TXSent: st1.TXSent - st0.TXSent, TXDropped: st1.TXDropped - st0.TXDropped,
		TXSpoofed: st1.TXSpoofed - st0.TXSpoofed, WireGot: rx1 - rx0}
	if s := elapsed.Seconds(); s > 0 {
		p.GuestPPS = float64(n) / s
		p.WirePPS = float64(p.WireGot) / s
	}
	return p, nil
}
