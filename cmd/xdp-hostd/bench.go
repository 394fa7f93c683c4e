package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/xdp-hostd/xdp-hostd/bench"
)

func runBench(ctx context.Context, e *env, args []string) error {
	if len(args) > 0 && args[0] == "vhost" {
		return runBenchVhost(ctx, e, args[1:])
	}
	if len(args) == 0 || args[0] != "dispatch" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintln(e.stderr, "usage: xdp-hostd bench dispatch [--json] [--packets N] [--repeat N]\n       xdp-hostd bench vhost [--json] [--packets N] [--modes copy,zerocopy] ...")
			return nil
		}
		return fmt.Errorf("%w: name a benchmark: xdp-hostd bench dispatch|vhost", errUsage)
	}
	fs := newFlags(e, "bench dispatch", "bench dispatch [--json] [--packets N] [--repeat N]")
	asJSON := fs.Bool("json", false, "print the results as JSON")
	packets := fs.Int("packets", 2000000, "live frames sent through each delivery path")
	repeat := fs.Int("repeat", 2000000, "BPF_PROG_RUN repetitions per round for the per-packet cost")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if *packets < 1000 || *repeat < 1000 {
		return fmt.Errorf("%w: --packets and --repeat must be at least 1000", errUsage)
	}
	res, err := bench.Dispatch(ctx, bench.DispatchOptions{Packets: *packets, Repeat: uint32(*repeat), Progress: e.stderr})
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(e.stdout, res)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "BPF_PROG_RUN, one packet\tns/packet\tover bare XDP_PASS\t")
	for _, r := range res.ProgRun {
		fmt.Fprintf(tw, "%s\t%.1f\t%+.1f\t\n", r.Name, r.NsPerPkt, r.Overhead)
	}
	tw.Flush()
	fmt.Fprintln(e.stdout)
	tw = tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "live frames into a tap\tsent\tsender Mpps\tsender ns/pkt\treader got\treader Mpps\tloss\t")
	for _, p := range res.Paths {
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.0f\t%d\t%.2f\t%.1f%%\t\n", p.Name, p.Sent, p.SenderMpps, p.SenderNsPerPkt, p.ReaderGot, p.ReaderMpps, 100*p.Loss)
	}
	tw.Flush()
	fmt.Fprintf(e.stdout, "\n%s\n", res.Placement)
	fmt.Fprintln(e.stdout, "\nratios (measured side by side in this run):")
	for _, r := range res.Ratios {
		fmt.Fprintf(e.stdout, "  %-62s %s\n", r.Name+":", r.Value)
	}
	return nil
}

func runBenchVhost(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "bench vhost", "bench vhost [--json] [--packets N] [--rates R,R,...] [--modes copy,zerocopy] [--burst N] [--no-testpmd] [--no-tap] [--busy-poll D] [--cpuprofile FILE]")
	asJSON := fs.Bool("json", false, "print the results as JSON")
	packets := fs.Int("packets", 1000000, "packets per offered rate")
	rates := fs.String("rates", "300k,1M,2M,0", "offered rates in packets per second (k and M suffixes; 0 = unpaced)")
	burst := fs.Uint("burst", 0, "frames per paced live-frames run, sent back to back (0: max(4096, rate/50), 20 ms of frames)")
	modes := fs.String("modes", "copy,zerocopy", "xdp-hostd delivery modes measured into the Go sink (copy, zerocopy; zerocopy fails unless the port really is in zero-copy mode)")
	noTestpmd := fs.Bool("no-testpmd", false, "skip the testpmd af_xdp -> vhost path")
	noTap := fs.Bool("no-tap", false, "skip the XDP tap path")
	busyPoll := fs.Duration("busy-poll", 0, "xdp-hostd's receive threads spin this long for more frames before they sleep (0: event-driven)")
	cpuProfile := fs.String("cpuprofile", "", "write a Go CPU profile of the first xdp-hostd path into the Go sink (the first of --modes) to this file")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *packets < 1000 {
		return fmt.Errorf("%w: --packets must be at least 1000", errUsage)
	}
	var rs []float64
	for _, r := range strings.Split(*rates, ",") {
		v, err := parseRate(r)
		if err != nil {
			return fmt.Errorf("%w: --rates: %w", errUsage, err)
		}
		rs = append(rs, v)
	}
	ms, err := parseModes(*modes)
	if err != nil {
		return fmt.Errorf("%w: --modes: %w", errUsage, err)
	}
	opts := bench.VhostOptions{Packets: *packets, Rates: rs, Modes: ms, Burst: uint32(*burst), NoTestpmd: *noTestpmd, NoTap: *noTap, BusyPoll: *busyPoll, Progress: e.stderr}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer f.Close()
		opts.CPUProfile = f
	}
	res, err := bench.Vhost(ctx, opts)
	if res == nil {
		return err
	}
	if *asJSON {
		if perr := printJSON(e.stdout, res); perr != nil {
			return perr
		}
		return err
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "path\toffered pps\tsent pps\tdelivered\tdelivered pps\tloss\tforwarder ns/frame\t")
	for _, p := range res.Points {
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%d\t%.0f\t%.1f%%\t%.0f\t\n", p.Path, offeredName(p.OfferedPPS), p.SentPPS, p.Delivered, p.DeliveredPPS, 100*p.Loss, p.ForwarderNsPerFrame)
	}
	tw.Flush()
	fmt.Fprintln(e.stdout, "\nxdp-hostd: where every frame went (columns from wire lost to delivered add up to sent, the kernel's count; the source's own is short by a batch when a signal restarted its run; sink = the sink's own count, less flooded copies and refused buffers; zero-copy: the XSK columns are the guest socket's, no buffer = the guest posted too few or the frame was larger than one; refused buffers drop no frame and are not summed)")
	tw = tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "path\toffered pps\tsource sent\tsent (kernel)\twire lost\tto host\tnot passed\tXSK no buffer (fill ring empty)\tRX ring full\tXSK invalid\thold drops\tvirtqueue drops\tdelivered\tunaccounted\tsink\trefused buffers\t")
	for _, p := range res.Points {
		if a := p.Accounting; a != nil {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", p.Path, offeredName(p.OfferedPPS), a.SourceSent, a.Sent, a.WireLost, a.ToHost, a.NotPassed,
				a.XSKFillEmpty, a.XSKRingFull, a.XSKInvalid, a.HoldDrops, a.VQDrops, a.Delivered, a.Unaccounted, a.SinkGot, a.RefusedBuffers)
		}
	}
	tw.Flush()
	if t := res.TX; t != nil {
		fmt.Fprintf(e.stdout, "\nguest -> wire (Go front-end, source MAC checked): %d frames in %v: %.0f pps from the guest; the port sent %d (dropped %d, spoofed %d), the wire got %d (%.0f pps)\n",
			t.Frames, t.Elapsed.Round(time.Millisecond), t.GuestPPS, t.TXSent, t.TXDropped, t.TXSpoofed, t.WireGot, t.WirePPS)
	}
	if t := res.Tap; t != nil {
		fmt.Fprintf(e.stdout, "\nXDP tap path (unpaced): sent %d at %.2f Mpps, the tap reader got %d at %.2f Mpps (loss %.1f%%)\n", t.Sent, t.SenderMpps, t.ReaderGot, t.ReaderMpps, 100*t.Loss)
	}
	fmt.Fprintf(e.stdout, "\n%s\n\nratios (measured side by side in this run):\n", res.Placement)
	for _, r := range res.Ratios {
		fmt.Fprintf(e.stdout, "  %s: %s\n", r.Name, r.Value)
	}
	return err
}

// parseModes parses --modes: copy and/or zerocopy, comma-separated.
func parseModes(s string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, m := range strings.Split(s, ",") {
		m = strings.TrimSpace(m)
		if m != "copy" && m != "zerocopy" {
			return nil, fmt.Errorf("mode %q: want copy, zerocopy or both (copy,zerocopy)", m)
		}
		if !seen[m] {
			seen[m] = true
			out = append(out, m)
		}
	}
	return out, nil
}

func offeredName(pps float64) string {
	if pps > 0 {
		return fmt.Sprintf("%.0f", pps)
	}
	return "unpaced"
}

// parseRate parses a rate in packets per second: 300000, 300k, 2M, 0.
func parseRate(s string) (float64, error) {
	s = strings.TrimSpace(s)
	mult := 1.0
	switch {
	case strings.HasSuffix(s, "k"), strings.HasSuffix(s, "K"):
		mult, s = 1e3, s[:len(s)-1]
	case strings.HasSuffix(s, "M"), strings.HasSuffix(s, "m"):
		mult, s = 1e6, s[:len(s)-1]
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("rate %q: want packets per second such as 300000, 300k or 2M (0: unpaced)", s)
	}
	return v * mult, nil
}
