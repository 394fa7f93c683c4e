package main

import (
	"context"
	"fmt"
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
			fmt.Fprintln(e.stderr, "usage: xdp-hostd bench dispatch [--json] [--packets N] [--repeat N]\n       xdp-hostd bench vhost [--json] [--packets N]")
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
	fs := newFlags(e, "bench vhost", "bench vhost [--json] [--packets N]")
	asJSON := fs.Bool("json", false, "print the results as JSON")
	packets := fs.Int("packets", 300000, "packets per offered rate")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *packets < 1000 {
		return fmt.Errorf("%w: --packets must be at least 1000", errUsage)
	}
	res, err := bench.Vhost(ctx, bench.VhostOptions{Packets: *packets, Progress: e.stderr})
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(e.stdout, res)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "path\toffered pps\tsent pps\tdelivered\tdelivered pps\tloss\tforwarding CPU per Mpkt\t")
	for _, p := range res.Points {
		offered := "unpaced"
		if p.OfferedPPS > 0 {
			offered = fmt.Sprintf("%.0f", p.OfferedPPS)
		}
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%d\t%.0f\t%.1f%%\t%v\t\n", p.Path, offered, p.SentPPS, p.Delivered, p.DeliveredPPS, 100*p.Loss, p.SwitchCPUPerM.Round(time.Millisecond))
	}
	tw.Flush()
	fmt.Fprintf(e.stdout, "\n%s\n\nratios (measured side by side in this run):\n", res.Placement)
	for _, r := range res.Ratios {
		fmt.Fprintf(e.stdout, "  %s: %s\n", r.Name, r.Value)
	}
	return nil
}
