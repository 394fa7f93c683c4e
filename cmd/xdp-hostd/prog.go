package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/xdp-hostd/xdp-hostd/client"
	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/guestprog"
)

// exitCode carries a specific exit code for an error.
type exitCode struct {
	code int
	err  error
}

func (e *exitCode) Error() string { return e.err.Error() }
func (e *exitCode) Unwrap() error { return e.err }

const progUsage = `usage: xdp-hostd prog COMMAND
  verify [--json] [--kernel] [--entry NAME] FILE     check FILE against the policy, no daemon needed
                                                     (exit 0 accepted, 1 refused, 2 unusable input)
  load --vm VM [--entry NAME] FILE                   install FILE on a VM running the built-in program
  replace --vm VM --expect ID [--entry NAME] FILE    replace the VM's program ID with FILE
  rm --vm VM --expect ID                             remove the VM's program ID (the built-in one returns)
  list [--json]                                      the current guest programs
  show [--json] ID                                   one program
all but verify take --socket PATH (default ` + daemon.DefaultSocket + `)`

func runProg(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		fmt.Fprintln(e.stderr, progUsage)
		return fmt.Errorf("%w: name a prog command", errUsage)
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "-h", "--help", "help":
		fmt.Fprintln(e.stderr, "usage: xdp-hostd prog\n"+strings.TrimPrefix(progUsage, "usage: xdp-hostd prog COMMAND\n"))
		return nil
	case "verify":
		return progVerify(e, args)
	case "load", "replace", "rm", "list", "show":
		return progDaemon(ctx, e, sub, args)
	}
	fmt.Fprintln(e.stderr, progUsage)
	return fmt.Errorf("%w: unknown prog command %q", errUsage, sub)
}

func progVerify(e *env, args []string) error {
	fs := newFlags(e, "prog verify", "prog verify [--json] [--kernel] [--entry NAME] FILE")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	kernel := fs.Bool("kernel", false, "also run the kernel verifier (loads the program against scratch maps, then unloads it; needs root)")
	entry := fs.String("entry", "", "the entry program, when the object has several")
	file, err := parseFlagsFile(fs, args)
	if err != nil {
		return err
	}
	obj, err := os.ReadFile(file)
	if err != nil {
		return &exitCode{2, err}
	}
	// The daemon's limits (its default ones), so that what verify accepts
	// the daemon's static check accepts too.
	report, parsed, err := guestprog.Check(obj, *entry, guestprog.DefaultLimits())
	if err != nil {
		return &exitCode{2, fmt.Errorf("%s: %w", file, err)}
	}
	var kerr error
	if report.Accepted && *kernel {
		kerr = guestprog.VerifyInKernel(parsed)
	}
	if *asJSON {
		out := struct {
			*guestprog.Report
			KernelVerifier string   `json:"kernel_verifier,omitempty"`
			VerifierLog    []string `json:"verifier_log,omitempty"`
		}{Report: report}
		if *kernel && report.Accepted {
			out.KernelVerifier = "accepted"
			var verr *guestprog.VerifierError
			if errors.As(kerr, &verr) {
				out.KernelVerifier, out.VerifierLog = "refused", verr.Log
			} else if kerr != nil {
				out.KernelVerifier = kerr.Error()
			}
		}
		if err := printJSON(e.stdout, out); err != nil {
			return err
		}
	} else {
		if report.Accepted {
			lim := guestprog.DefaultLimits()
			loops := ""
			if report.Cost.Loops {
				loops = "; loops of backward jumps: bounded by the kernel verifier at load"
			}
			fmt.Fprintf(e.stdout, "%s: accepted by the policy (entry %s, %d programs, %d instructions, worst case %d instructions per packet of a budget of %d%s, kernel memory up to %d KiB of the %d KiB quota: maps %d KiB, programs %d KiB)\n",
				file, report.Entry, len(report.Programs), report.Instructions, report.Cost.Worst, report.Cost.Budget, loops, report.Memory>>10, lim.Memory>>10, report.MapMemory>>10, report.ProgramMemory>>10)
		} else {
			fmt.Fprintf(e.stdout, "%s: refused (%d violations):\n", file, len(report.Violations))
			for _, v := range report.Violations {
				fmt.Fprintf(e.stdout, "  %s\n", v)
			}
		}
		if *kernel && report.Accepted {
			if kerr == nil {
				fmt.Fprintln(e.stdout, "kernel verifier: accepted")
			} else {
				fmt.Fprintf(e.stdout, "kernel verifier: %v\n", kerr)
			}
		}
	}
	if !report.Accepted {
		return &exitCode{1, fmt.Errorf("%s refused by the policy", file)}
	}
	if kerr != nil {
		return &exitCode{1, fmt.Errorf("%s refused by the kernel verifier", file)}
	}
	return nil
}

// parseFlagsFile parses flags followed by exactly one file argument.
func parseFlagsFile(fs interface {
	Parse([]string) error
	Args() []string
}, args []string) (string, error) {
	if err := fs.Parse(args); err != nil {
		return "", flagErr(err)
	}
	if len(fs.Args()) != 1 {
		return "", fmt.Errorf("%w: give exactly one object file", errUsage)
	}
	return fs.Args()[0], nil
}

func progDaemon(ctx context.Context, e *env, sub string, args []string) error {
	fs := newFlags(e, "prog "+sub, strings.TrimSpace(progSynopsis[sub]))
	socket := fs.String("socket", daemon.DefaultSocket, "the daemon's API socket")
	asJSON := fs.Bool("json", false, "print JSON")
	vm := fs.String("vm", "", "the VM")
	expect := fs.Uint64("expect", 0, "the ID of the program you believe is current")
	entry := fs.String("entry", "", "the entry program, when the object has several")
	if err := fs.Parse(args); err != nil {
		return flagErr(err)
	}
	rest := fs.Args()
	c := client.New(*socket)
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	need := func(cond bool, what string) error {
		if !cond {
			return fmt.Errorf("%w: %s (usage: xdp-hostd %s)", errUsage, what, progSynopsis[sub])
		}
		return nil
	}
	switch sub {
	case "load", "replace":
		if err := errors.Join(need(*vm != "", "--vm is required"), need(len(rest) == 1, "give one object file"),
			need(sub == "load" || *expect != 0, "--expect ID is required: the program you believe is current")); err != nil {
			return err
		}
		obj, err := os.ReadFile(rest[0])
		if err != nil {
			return &exitCode{2, err}
		}
		var rec *daemon.ProgramRecord
		if sub == "load" {
			rec, err = c.Load(ctx, *vm, obj, *entry)
		} else {
			rec, err = c.Replace(ctx, *vm, *expect, obj, *entry)
		}
		if err != nil {
			return err
		}
		return printRecords(e.stdout, *asJSON, []daemon.ProgramRecord{*rec})
	case "rm":
		if err := errors.Join(need(*vm != "", "--vm is required"), need(*expect != 0, "--expect ID is required"), need(len(rest) == 0, "no arguments")); err != nil {
			return err
		}
		if err := c.Remove(ctx, *vm, *expect); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "removed program %d from %s; it runs the built-in program\n", *expect, *vm)
		return nil
	case "list":
		if err := need(len(rest) == 0, "no arguments"); err != nil {
			return err
		}
		recs, err := c.Programs(ctx)
		if err != nil {
			return err
		}
		return printRecords(e.stdout, *asJSON, recs)
	default: // show
		if err := need(len(rest) == 1, "give one program ID"); err != nil {
			return err
		}
		id, err := strconv.ParseUint(rest[0], 10, 64)
		if err != nil {
			return fmt.Errorf("%w: %q is not a program ID", errUsage, rest[0])
		}
		rec, err := c.Program(ctx, id)
		if err != nil {
			return err
		}
		return printRecords(e.stdout, *asJSON, []daemon.ProgramRecord{*rec})
	}
}

var progSynopsis = map[string]string{
	"load":    "prog load --vm VM [--entry NAME] [--socket PATH] [--json] FILE",
	"replace": "prog replace --vm VM --expect ID [--entry NAME] [--socket PATH] [--json] FILE",
	"rm":      "prog rm --vm VM --expect ID [--socket PATH]",
	"list":    "prog list [--json] [--socket PATH]",
	"show":    "prog show [--json] [--socket PATH] ID",
}

func printRecords(w io.Writer, asJSON bool, recs []daemon.ProgramRecord) error {
	if asJSON {
		return printJSON(w, recs)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tVM\tUPLINK\tQUEUES\tENTRY\tKERNEL ID\tSHA256\tLOADED\tPASS\tDROP\tTX\tREDIRECT\tABORTED")
	for _, r := range recs {
		var v [5]uint64
		if r.Verdicts != nil {
			v = [5]uint64{r.Verdicts.Pass.Packets, r.Verdicts.Drop.Packets, r.Verdicts.TX.Packets, r.Verdicts.Redirect.Packets, r.Verdicts.Aborted.Packets + r.Verdicts.Invalid.Packets}
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%v\t%s\t%d\t%.12s\t%s\t%d\t%d\t%d\t%d\t%d\n", r.ID, r.VM, r.Uplink, r.Queues, r.Entry, r.KernelID, r.SHA256,
			r.LoadedAt.Format(time.RFC3339), v[0], v[1], v[2], v[3], v[4])
	}
	return tw.Flush()
}

func runCaps(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "caps", "caps [--vm VM] [--socket PATH]")
	vm := fs.String("vm", "", "ask the daemon for this VM's capabilities (delivery modes, ports, uplink XDP features)")
	socket := fs.String("socket", daemon.DefaultSocket, "the daemon's API socket")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var caps *guestprog.Capabilities
	if *vm == "" {
		c := guestprog.Caps(guestprog.DefaultLimits())
		caps = &c
	} else {
		var err error
		if caps, err = client.New(*socket).Caps(ctx, *vm); err != nil {
			return err
		}
	}
	return printJSON(e.stdout, caps)
}

func runStatus(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "status", "status [--json] [--socket PATH]")
	socket := fs.String("socket", daemon.DefaultSocket, "the daemon's API socket")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	st, err := client.New(*socket).Status(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(e.stdout, st)
	}
	for _, u := range st.Uplinks {
		fmt.Fprintf(e.stdout, "uplink %s: %d RX queues, XDP %s mode, features %s; to host %d packets\n", u.Inventory.Name, u.Inventory.RxQueues, u.XDPMode, u.Inventory.XDP, u.Stats.Host.Packets)
		tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  VM\tMAC\tQUEUES\tDELIVERY\tDEVICE\tPROGRAM\tPORTS\tPASS\tDROP\tTX\tREDIRECT\tABORTED\tTAP-REDIRECTED\tSPOOFED")
		for _, v := range u.VMs {
			fmt.Fprintf(tw, "  %s\t%s\t%v\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", v.Name, v.MAC, v.Queues, v.Delivery, deviceColumn(v), programColumn(v), len(v.Ports),
				v.Verdicts.Pass.Packets, v.Verdicts.Drop.Packets, v.Verdicts.TX.Packets, v.Verdicts.Redirect.Packets, v.Verdicts.Aborted.Packets+v.Verdicts.Invalid.Packets,
				v.TX.Redirected.Packets, v.TX.Spoofed.Packets)
		}
		tw.Flush()
		for _, v := range u.VMs {
			printWarnings(e.stdout, v)
		}
	}
	return nil
}

func clientStatus(ctx context.Context, socket string) (*daemon.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return client.New(socket).Status(ctx)
}
