// Package demo runs xdp-hostd's dataplane end to end on a topology of its
// own: two namespaces joined by a multi-queue veth (the "NIC"), two VMs on
// taps with dedicated queues, traffic aimed at each VM and at the host, and
// traffic the VMs send back out. It reports, per VM, what was sent, what
// arrived and where, and the VM's verdict counters.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/traffic"
)

// Options configure Run; zero values are defaults.
type Options struct {
	Packets  int           // frames aimed at each VM per path; default 1000
	Unknown  int           // frames for the host (unknown MAC); default 200
	Prefix   string        // unique name prefix for namespaces; default per process
	Timeout  time.Duration // how long to wait for frames to arrive; default 10s
	Log      *slog.Logger
	Progress io.Writer // one line per step; nil for none
}

// Report is what the demo saw.
type Report struct {
	Uplink   string     `json:"uplink"`
	XDPMode  string     `json:"xdp_mode"`
	Queues   int        `json:"rx_queues"`
	Steering string     `json:"steering"`
	VMs      []VMReport `json:"vms"`
	Host     HostReport `json:"host"`
	OK       bool       `json:"ok"`
	Problems []string   `json:"problems,omitempty"`
}

// VMReport is one VM's line of the report.
type VMReport struct {
	Name   string `json:"name"`
	MAC    string `json:"mac"`
	Queues []int  `json:"queues"`
	Tap    string `json:"tap"`
	// Host to VM.
	Sent         uint64           `json:"sent"`         // frames aimed at this VM
	Delivered    uint64           `json:"delivered"`    // of those, read from its tap
	Misdelivered uint64           `json:"misdelivered"` // frames aimed at another VM read from its tap
	Verdicts     hostnet.Verdicts `json:"verdicts"`
	// VM to host.
	TXSent     uint64          `json:"tx_sent"`    // frames the VM wrote into its tap
	TXSpoofed  uint64          `json:"tx_spoofed"` // of those, with a source MAC not its own
	TXArrived  uint64          `json:"tx_arrived"` // frames from this VM that reached the wire side
	TXCounters hostnet.TXStats `json:"tx_counters"`
}

// HostReport covers traffic that is not any VM's.
type HostReport struct {
	Sent       uint64        `json:"sent"`        // frames to the uplink's own MAC and IP
	Received   uint64        `json:"received"`    // of those, received by a socket on the host
	ToHost     hostnet.Count `json:"to_host"`     // the dispatcher's count of packets passed to the host stack
	ReachedVMs uint64        `json:"reached_vms"` // host frames read from any tap (must be 0)
}

const (
	hostTag  = 99
	hostPort = 7000
	vmPort   = 7001
	wirePort = 7002
)

type vmDef struct {
	name  string
	mac   net.HardwareAddr
	queue int
	tag   uint16
	ip    netip.Addr
}

// Run sets the topology up, runs the traffic and tears everything down, also
// on error and when ctx is cancelled.
func Run(ctx context.Context, opts Options) (rep *Report, err error) {
	if opts.Packets == 0 {
		opts.Packets = 1000
	}
	if opts.Unknown == 0 {
		opts.Unknown = 200
	}
	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	step := func(format string, args ...any) {
		if opts.Progress != nil {
			fmt.Fprintf(opts.Progress, "demo: "+format+"\n", args...)
		}
	}

	step("creating namespaces and a 4-queue veth uplink")
	topo, err := hostnet.NewTopology(hostnet.TopologyOptions{Prefix: opts.Prefix, Queues: 4})
	if err != nil {
		return nil, fmt.Errorf("create demo topology: %w", err)
	}
	defer func() {
		if cerr := topo.Close(); cerr != nil && err == nil {
			err = cerr
		}
		step("removed namespaces %s and %s", topo.HostNS, topo.WireNS)
	}()

	step("attaching the dispatcher to %s", topo.Uplink)
	dp, err := hostnet.Open(hostnet.Config{Uplink: topo.Uplink, NetNS: topo.HostNS, Log: opts.Log})
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := dp.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()

	defs := []vmDef{
		{"vm1", net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x01, 0x01}, 1, 1, netip.MustParseAddr("10.201.0.11")},
		{"vm2", net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x02, 0x02}, 2, 2, netip.MustParseAddr("10.201.0.12")},
	}
	vms := make([]*hostnet.VM, len(defs))
	for i, def := range defs {
		step("adding %s (MAC %s, dedicated queue %d)", def.name, def.mac, def.queue)
		if vms[i], err = dp.AddVM(hostnet.VMSpec{Name: def.name, MAC: def.mac, Queues: []int{def.queue}}); err != nil {
			return nil, err
		}
	}

	rep = &Report{Uplink: topo.Uplink, XDPMode: dp.Mode().String(), Queues: topo.Queues, Steering: "ntuple by destination MAC"}
	if serr := dp.Steering(); serr != nil {
		rep.Steering = "none (" + serr.Error() + "); the wire side aims at each VM's queue"
	}

	// Receivers: each VM's tap, a UDP socket on the host, one on the wire.
	taps := make([]*traffic.Counter, len(vms))
	for i, vm := range vms {
		var srcs []traffic.Source
		for _, q := range vm.Tap().Queues() {
			srcs = append(srcs, q)
		}
		taps[i] = traffic.NewCounter(srcs...)
		defer taps[i].Close()
	}
	hostSock, err := traffic.ListenUDP(topo.HostNS, topo.UplinkIP, hostPort)
	if err != nil {
		return nil, err
	}
	defer hostSock.Close()
	wireSock, err := traffic.ListenUDP(topo.WireNS, topo.WireIP, wirePort)
	if err != nil {
		return nil, err
	}
	defer wireSock.Close()
	hostCount := traffic.NewPayloadCounter(hostSock)
	defer hostCount.Close()
	wireCount := traffic.NewPayloadCounter(wireSock)
	defer wireCount.Close()

	wireIP, _ := netip.AddrFromSlice(topo.WireIP)
	upIP, _ := netip.AddrFromSlice(topo.UplinkIP)

	// Host to VM: on each VM's dedicated queue, and by MAC on shared queue 0.
	sender, err := traffic.NewSender(topo.WireNS, topo.Wire)
	if err != nil {
		return nil, err
	}
	defer sender.Close()
	for _, def := range defs {
		spec := traffic.FrameSpec{Dst: def.mac, Src: topo.WireMAC, SrcIP: wireIP, DstIP: def.ip, SrcPort: wirePort, DstPort: vmPort, Size: 128, Tag: def.tag}
		step("sending %d frames to %s on its queue %d and %d by MAC on shared queue 0", opts.Packets, def.name, def.queue, opts.Packets)
		if err := sender.Send(spec, def.queue, 0, opts.Packets); err != nil {
			return nil, err
		}
		if err := sender.Send(spec, 0, uint32(opts.Packets), opts.Packets); err != nil {
			return nil, err
		}
	}
	step("sending %d frames to the host's own MAC (not a VM's)", opts.Unknown)
	hostSpec := traffic.FrameSpec{Dst: topo.UplinkMAC, Src: topo.WireMAC, SrcIP: wireIP, DstIP: upIP, SrcPort: wirePort, DstPort: hostPort, Size: 128, Tag: hostTag}
	if err := sender.Send(hostSpec, 0, 0, opts.Unknown); err != nil {
		return nil, err
	}

	// VM to host: each VM writes frames into its tap, one in ten spoofed.
	for i, def := range defs {
		good := traffic.FrameSpec{Dst: topo.WireMAC, Src: def.mac, SrcIP: def.ip, DstIP: wireIP, SrcPort: vmPort, DstPort: wirePort, Size: 128, Tag: def.tag}
		spoof := good
		spoof.Src = defs[(i+1)%len(defs)].mac
		spoof.Tag = def.tag + 100
		step("%s sends %d frames and %d with a spoofed source MAC", def.name, opts.Packets, opts.Packets/10)
		if err := traffic.WriteFrames(vms[i].Tap().Queues()[0], good, opts.Packets); err != nil {
			return nil, fmt.Errorf("%s transmit: %w", def.name, err)
		}
		if err := traffic.WriteFrames(vms[i].Tap().Queues()[0], spoof, opts.Packets/10); err != nil {
			return nil, fmt.Errorf("%s transmit: %w", def.name, err)
		}
	}

	step("reading taps and sockets (at most %s)", opts.Timeout)
	wctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	// All counters read concurrently; each wait ends when its count is
	// complete (plus a quiet 100 ms to catch surplus) or at the deadline.
	waits := []struct {
		c    *traffic.Counter
		want uint64
	}{{hostCount, uint64(opts.Unknown)}, {wireCount, uint64(len(defs) * opts.Packets)}}
	for i := range defs {
		waits = append(waits, struct {
			c    *traffic.Counter
			want uint64
		}{taps[i], uint64(2 * opts.Packets)})
	}
	for _, w := range waits {
		if err := w.c.WaitFor(wctx, w.want); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return nil, err
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("demo interrupted: %w", err)
	}
	hostGot := hostCount.Total()
	wireGot := wireCount.Snapshot().ByTag

	for i, def := range defs {
		r := VMReport{Name: def.name, MAC: def.mac.String(), Queues: []int{def.queue}, Tap: vms[i].Tap().Name(),
			Sent: uint64(2 * opts.Packets)}
		snap := taps[i].Snapshot()
		for tag, n := range snap.ByTag {
			if tag == def.tag {
				r.Delivered += n
			} else {
				r.Misdelivered += n
			}
			if tag == hostTag {
				rep.Host.ReachedVMs += n
			}
		}
		if r.Verdicts, err = vms[i].Verdicts(); err != nil {
			return nil, err
		}
		if r.TXCounters, err = vms[i].TXStats(); err != nil {
			return nil, err
		}
		r.TXSent = uint64(opts.Packets + opts.Packets/10)
		r.TXSpoofed = uint64(opts.Packets / 10)
		r.TXArrived = wireGot[def.tag] + wireGot[def.tag+100]
		rep.VMs = append(rep.VMs, r)
	}
	rep.Host.Sent = uint64(opts.Unknown)
	rep.Host.Received = hostGot
	st, err := dp.Stats()
	if err != nil {
		return nil, err
	}
	rep.Host.ToHost = st.Host
	rep.check()
	return rep, nil
}

// check fills OK and Problems: every VM got exactly its frames and nothing
// else, sent exactly its unspoofed frames, and the host got its own.
func (r *Report) check() {
	for _, vm := range r.VMs {
		if vm.Delivered != vm.Sent {
			r.Problems = append(r.Problems, fmt.Sprintf("%s: %d of %d frames delivered", vm.Name, vm.Delivered, vm.Sent))
		}
		if vm.Misdelivered != 0 {
			r.Problems = append(r.Problems, fmt.Sprintf("%s: %d frames of others delivered to it", vm.Name, vm.Misdelivered))
		}
		if vm.Verdicts.Pass.Packets != vm.Sent {
			r.Problems = append(r.Problems, fmt.Sprintf("%s: pass counter %d, want %d", vm.Name, vm.Verdicts.Pass.Packets, vm.Sent))
		}
		if want := vm.TXSent - vm.TXSpoofed; vm.TXArrived != want || vm.TXCounters.Redirected.Packets != want {
			r.Problems = append(r.Problems, fmt.Sprintf("%s: %d frames reached the wire and %d were counted redirected, want %d", vm.Name, vm.TXArrived, vm.TXCounters.Redirected.Packets, want))
		}
		if vm.TXCounters.Spoofed.Packets != vm.TXSpoofed {
			r.Problems = append(r.Problems, fmt.Sprintf("%s: %d spoofed frames dropped, want %d", vm.Name, vm.TXCounters.Spoofed.Packets, vm.TXSpoofed))
		}
	}
	if r.Host.Received != r.Host.Sent || r.Host.ReachedVMs != 0 {
		r.Problems = append(r.Problems, fmt.Sprintf("host: received %d of %d frames, %d reached VMs", r.Host.Received, r.Host.Sent, r.Host.ReachedVMs))
	}
	r.OK = len(r.Problems) == 0
}
