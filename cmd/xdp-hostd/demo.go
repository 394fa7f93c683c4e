package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/xdp-hostd/xdp-hostd/demo"
)

var errDemoFailed = errors.New("the demo's traffic did not arrive as expected")

func runDemo(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "demo", "demo [--json] [--packets N]")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	packets := fs.Int("packets", 1000, "frames aimed at each VM on each path")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *packets < 1 || *packets > 1000000 {
		return fmt.Errorf("%w: --packets %d: use 1 to 1000000", errUsage, *packets)
	}
	// Progress goes to stderr, so --json output stays clean.
	opts := demo.Options{Packets: *packets, Log: e.log, Progress: e.stderr}
	rep, err := demo.Run(ctx, opts)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("interrupted; everything the demo created was removed")
		}
		return err
	}
	if *asJSON {
		if err := printJSON(e.stdout, rep); err != nil {
			return err
		}
	} else {
		printReport(e.stdout, rep)
	}
	if !rep.OK {
		return errDemoFailed
	}
	return nil
}

func printReport(w io.Writer, r *demo.Report) {
	fmt.Fprintf(w, "uplink %s: %d RX queues, XDP %s mode, steering: %s\n\n", r.Uplink, r.Queues, r.XDPMode, r.Steering)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "VM\tMAC\tqueue\tsent\tdelivered\tmisdelivered\tpass\tdrop\ttx\tredirect\taborted\tundelivered\t")
	for _, vm := range r.VMs {
		v := vm.Verdicts
		fmt.Fprintf(tw, "%s\t%s\t%v\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", vm.Name, vm.MAC, vm.Queues, vm.Sent, vm.Delivered, vm.Misdelivered,
			v.Pass.Packets, v.Drop.Packets, v.TX.Packets, v.Redirect.Packets, v.Aborted.Packets+v.Invalid.Packets, v.Undelivered.Packets)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "VM -> wire\twritten\tspoofed\tredirected to uplink\tarrived\tspoofed dropped\t")
	for _, vm := range r.VMs {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t\n", vm.Name, vm.TXSent, vm.TXSpoofed, vm.TXCounters.Redirected.Packets, vm.TXArrived, vm.TXCounters.Spoofed.Packets)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nhost (not a VM's MAC): sent %d, passed to host stack %d, received by a host socket %d, reached VMs %d\n",
		r.Host.Sent, r.Host.ToHost.Packets, r.Host.Received, r.Host.ReachedVMs)
	if r.OK {
		fmt.Fprintln(w, "\nOK: every VM got exactly its packets, nothing was misdelivered, spoofed frames were dropped")
	} else {
		fmt.Fprintln(w, "\nFAILED:")
		for _, p := range r.Problems {
			fmt.Fprintf(w, "  - %s\n", p)
		}
	}
}
