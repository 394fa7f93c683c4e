package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/traffic"
)

// DispatchOptions configure Dispatch; zero values are defaults.
type DispatchOptions struct {
	Packets  int    // live frames per delivery path; default 2,000,000
	Repeat   uint32 // BPF_PROG_RUN repetitions per round; default 2,000,000
	Rounds   int    // rounds of the BPF_PROG_RUN comparison; default 5
	Progress io.Writer
}

// PathResult is one delivery path into a tap, fed by live frames.
type PathResult struct {
	Name           string  `json:"name"`
	Sent           uint64  `json:"sent"`
	SenderMpps     float64 `json:"sender_mpps"`       // rate the sending core sustained
	SenderNsPerPkt float64 `json:"sender_ns_per_pkt"` // kernel-side cost per packet on that core
	ReaderGot      uint64  `json:"reader_got"`        // marked frames one read() per frame got from the tap
	ReaderMpps     float64 `json:"reader_mpps"`
	Loss           float64 `json:"loss"` // 1 - got/sent
}

// Ratio is a named comparison.
type Ratio struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// DispatchResult is the whole benchmark.
type DispatchResult struct {
	ProgRun   []ProgRunResult `json:"prog_run"`
	Paths     []PathResult    `json:"paths"`
	Placement string          `json:"placement"`
	Ratios    []Ratio         `json:"ratios"`
}

const (
	senderCPU = 0
	readerCPU = 1
)

// Dispatch runs both parts: the per-packet cost of the dispatch path under
// BPF_PROG_RUN, and live frames into a tap through xdp-hostd's XDP redirect
// against the same frames through a Linux bridge.
func Dispatch(ctx context.Context, opts DispatchOptions) (*DispatchResult, error) {
	if opts.Packets == 0 {
		opts.Packets = 2000000
	}
	if opts.Repeat == 0 {
		opts.Repeat = 2000000
	}
	if opts.Rounds == 0 {
		opts.Rounds = 5
	}
	progress := func(format string, args ...any) {
		if opts.Progress != nil {
			fmt.Fprintf(opts.Progress, "bench: "+format+"\n", args...)
		}
	}
	res := &DispatchResult{
		Placement: fmt.Sprintf("placement: the live-frames sender runs on CPU %d, the tap reader on CPU %d (%d CPUs online); the XDP path runs in the sender's softirq on CPU %d",
			senderCPU, readerCPU, runtime.NumCPU(), senderCPU),
	}

	progress("BPF_PROG_RUN: %d rounds of %d runs per program", opts.Rounds, opts.Repeat)
	pr, err := DispatchCost(opts.Repeat, opts.Rounds)
	if err != nil {
		return nil, err
	}
	res.ProgRun = pr

	for _, path := range []struct {
		name string
		run  func(context.Context, int) (PathResult, error)
	}{
		{"xdp-hostd: XDP redirect -> tap", xdpTapPath},
		{"kernel: bridge -> tap", bridgeTapPath},
	} {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		progress("%s: %d live frames", path.name, opts.Packets)
		p, err := path.run(ctx, opts.Packets)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path.name, err)
		}
		p.Name = path.name
		res.Paths = append(res.Paths, p)
	}

	if len(pr) == 3 {
		res.Ratios = append(res.Ratios,
			Ratio{"indirection overhead, by MAC (target < 10 ns)", fmt.Sprintf("%.1f ns/packet", pr[1].Overhead)},
			Ratio{"indirection overhead, by queue (target < 10 ns)", fmt.Sprintf("%.1f ns/packet", pr[2].Overhead)})
	}
	x, b := res.Paths[0], res.Paths[1]
	res.Ratios = append(res.Ratios,
		Ratio{"sender-side rate, XDP / bridge (target >= 3x)", fmt.Sprintf("%.2fx", x.SenderMpps/b.SenderMpps)},
		Ratio{"tap reader's receive rate, XDP / bridge (target >= 1x)", fmt.Sprintf("%.2fx", x.ReaderMpps/max(b.ReaderMpps, 1e-9))})
	return res, nil
}

var benchMAC = net.HardwareAddr{0x02, 0, 0, 0, 0x0b, 0x01}

// xdpTapPath: live frames from the wire side reach the uplink, where the
// dispatcher hands them to a VM whose built-in program passes them into its
// tap.
func xdpTapPath(ctx context.Context, packets int) (PathResult, error) {
	topo, err := hostnet.NewTopology(hostnet.TopologyOptions{Prefix: "xhbx", Queues: 2})
	if err != nil {
		return PathResult{}, err
	}
	defer topo.Close()
	dp, err := hostnet.Open(hostnet.Config{Uplink: topo.Uplink, NetNS: topo.HostNS})
	if err != nil {
		return PathResult{}, err
	}
	defer dp.Close()
	vm, err := dp.AddVM(hostnet.VMSpec{Name: "bench", MAC: benchMAC})
	if err != nil {
		return PathResult{}, err
	}
	return measure(ctx, topo, vm.Tap().Queues()[0], packets)
}

// bridgeTapPath: the same frames through the kernel's ordinary path: the
// uplink and a tap in a Linux bridge, the VM's MAC learned on the tap.
func bridgeTapPath(ctx context.Context, packets int) (PathResult, error) {
	topo, err := hostnet.NewTopology(hostnet.TopologyOptions{Prefix: "xhbb", Queues: 2})
	if err != nil {
		return PathResult{}, err
	}
	defer topo.Close()
	host, err := hostnet.NewNSRunner(topo.HostNS)
	if err != nil {
		return PathResult{}, err
	}
	defer host.Close()
	tap, err := hostnet.CreateTap(hostnet.TapOptions{Name: "xhbbtap", Queues: 1, NetNS: topo.HostNS})
	if err != nil {
		return PathResult{}, err
	}
	defer tap.Close()
	err = host.Do(func() error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "xhbbbr"}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("create bridge: %w", err)
		}
		for _, name := range []string{topo.Uplink, tap.Name()} {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetMaster(l, br); err != nil {
				return fmt.Errorf("add %s to bridge: %w", name, err)
			}
		}
		tl, err := netlink.LinkByName(tap.Name())
		if err != nil {
			return err
		}
		// The VM's MAC sits behind the tap, as the bridge would learn it.
		if err := netlink.NeighAppend(&netlink.Neigh{LinkIndex: tl.Attrs().Index, Family: unix.AF_BRIDGE,
			Flags: netlink.NTF_MASTER, State: netlink.NUD_NOARP, HardwareAddr: benchMAC}); err != nil {
			return fmt.Errorf("static FDB entry: %w", err)
		}
		return netlink.LinkSetUp(br)
	})
	if err != nil {
		return PathResult{}, err
	}
	// Live frames enter a veth through XDP transmit, which needs NAPI on the
	// receiving side: GRO gives it that, with no XDP program involved.
	if err := hostnet.SetGRO(host, topo.Uplink, true); err != nil {
		return PathResult{}, err
	}
	return measure(ctx, topo, tap.Queues()[0], packets)
}

// measure sends live frames from the wire side on senderCPU while a reader
// pinned to readerCPU reads the tap, one read() per frame.
func measure(ctx context.Context, topo *hostnet.Topology, tapq *os.File, packets int) (PathResult, error) {
	frame := make([]byte, 64)
	spec := traffic.FrameSpec{Dst: benchMAC, Src: topo.WireMAC, Size: 64, Tag: 1}
	if _, err := spec.Build(frame, 0); err != nil {
		return PathResult{}, err
	}
	rc, err := tapq.SyscallConn()
	if err != nil {
		return PathResult{}, fmt.Errorf("tap reader: %w", err)
	}

	var got atomic.Uint64
	var lastRead atomic.Int64
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		pinTo(readerCPU)
		buf := make([]byte, 2048)
		for !stop.Load() {
			// Bounded wait, so stop is seen within 100 ms.
			tapq.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			rc.Read(func(fd uintptr) bool {
				for {
					n, err := unix.Read(int(fd), buf)
					if err == unix.EAGAIN {
						return false // wait for the poller
					}
					if err != nil {
						return true
					}
					if _, ok := traffic.ParseMarker(buf[:n]); !ok {
						continue // not ours (the bridge floods ARP, for example)
					}
					got.Add(1)
					lastRead.Store(time.Now().UnixNano())
				}
			})
		}
	}()

	start := time.Now()
	br, err := traffic.Blast(traffic.BlastOptions{NetNS: topo.WireNS, Ifname: topo.Wire, Frame: frame, Count: uint32(packets), CPU: senderCPU})
	if err != nil {
		stop.Store(true)
		<-done
		return PathResult{}, err
	}
	// Let the reader drain: stop after 200 ms without a frame (at most 5 s).
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
		if last := lastRead.Load(); last == 0 || time.Since(time.Unix(0, last)) > 200*time.Millisecond {
			break
		}
	}
	stop.Store(true)
	<-done

	sent := br.Sent
	secs := br.Elapsed.Seconds()
	p := PathResult{Sent: sent, ReaderGot: got.Load()}
	if secs > 0 {
		p.SenderMpps = float64(sent) / secs / 1e6
		p.SenderNsPerPkt = secs * 1e9 / float64(sent)
	}
	if last := lastRead.Load(); last != 0 {
		if d := time.Unix(0, last).Sub(start).Seconds(); d > 0 {
			p.ReaderMpps = float64(p.ReaderGot) / d / 1e6
		}
	}
	if sent > 0 {
		p.Loss = 1 - float64(p.ReaderGot)/float64(sent)
	}
	return p, nil
}

// pinTo pins the calling (locked) thread to one CPU, if that CPU exists.
func pinTo(cpu int) {
	if cpu >= runtime.NumCPU() {
		return
	}
	var set unix.CPUSet
	set.Set(cpu)
	_ = unix.SchedSetaffinity(0, &set)
}
