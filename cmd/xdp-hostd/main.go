// Command xdp-hostd is the host daemon that runs VM owners' XDP programs on
// their VMs' dedicated uplink queues and delivers what they pass into the VMs.
//
// Subcommands (each prints its flags with -h):
//
//	run --config F   run the dataplane the configuration file declares
//	down --config F  remove what the daemon left behind (pins, state, sockets)
//	demo             run two VMs on an embedded topology and show per-VM results
//	bench            dispatch|vhost: benchmarks, separate from the tests
//	vm               add|rm|list|show|attach|detach|check: the running daemon's VMs
//	port             add|rm|list: a VM's port table
//	prog             verify|load|replace|rm|list|show: guest programs
//	caps             the capability document for guest programs
//	status           the running daemon's uplinks, VMs and counters
//	hook             libvirt's qemu hook (/etc/libvirt/hooks/qemu)
//	qemu-args        the QEMU arguments that connect a VM to the daemon
//	version          the version and the guest ABI version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// env is what a subcommand may use of the outside world, so tests can run
// subcommands in-process.
type env struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	log    *slog.Logger
}

type command struct {
	name  string
	usage string
	run   func(ctx context.Context, e *env, args []string) error
}

var commands []command

func init() {
	commands = []command{
		{"run", "run --config FILE: run the dataplane for the uplinks and VMs the file declares, until SIGINT/SIGTERM", runRun},
		{"down", "down --config FILE: remove everything the daemon created (pins, saved state, stale sockets); run it with the daemon stopped", runDown},
		{"demo", "demo [--json] [--packets N]: run two VMs on an embedded namespace topology and report what each got", runDemo},
		{"bench", "bench dispatch|vhost: benchmark the dispatch and tap path against a bridge, or vhost-user delivery against DPDK testpmd", runBench},
		{"vm", "vm add|rm|list|show|attach|detach|check: manage the running daemon's VMs; hot-plug a VM's vhost-user NIC into its QEMU over QMP", runVM},
		{"port", "port add|rm|list: manage a VM's port table", runPort},
		{"prog", "prog verify|load|replace|rm|list|show: check and manage guest XDP programs", runProg},
		{"caps", "caps [--vm VM]: the capability document guest programs are written against", runCaps},
		{"status", "status [--json]: the running daemon's uplinks, VMs and counters", runStatus},
		{"hook", "hook qemu DOMAIN OP SUBOP: libvirt's qemu hook (domain XML on stdin)", runHook},
		{"migrate", "migrate [--final|--abort] VM --to DEST_SOCKET: move a VM's registration, program and maps to another daemon (live migration); migrate export|import", runMigrate},
		{"qemu-args", "qemu-args VM: the QEMU arguments that connect a VM to the daemon", runQEMUArgs},
		{"version", "version: print the version and the guest ABI version", runVersion},
	}
}

// errUsage marks errors about the command line (exit code 2).
var errUsage = errors.New("usage")

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: xdp-hostd COMMAND [flags]\n\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %s\n", c.usage)
	}
	fmt.Fprintln(w, "\nRun 'xdp-hostd COMMAND -h' for a command's flags.")
}

func run(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 {
		usage(e.stderr)
		return 2
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(e.stdout)
		return 0
	}
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, e, args[1:])
		var ec *exitCode
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.As(err, &ec):
			fmt.Fprintf(e.stderr, "xdp-hostd %s: %v\n", c.name, err)
			return ec.code
		case errors.Is(err, errUsage):
			fmt.Fprintf(e.stderr, "xdp-hostd %s: %v\n", c.name, err)
			return 2
		default:
			fmt.Fprintf(e.stderr, "xdp-hostd %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(e.stderr, "xdp-hostd: unknown command %q\n", args[0])
	usage(e.stderr)
	return 2
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel()}))
	slog.SetDefault(log)
	os.Exit(run(ctx, &env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, log: log}, os.Args[1:]))
}

func logLevel() slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(os.Getenv("XDP_HOSTD_LOG"))); err != nil {
		return slog.LevelInfo
	}
	return l
}

// newFlags makes a flag set that reports errors instead of exiting.
func newFlags(e *env, name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: xdp-hostd %s\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

func flagErr(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	return fmt.Errorf("%w: %v", errUsage, err)
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return flagErr(err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	return nil
}
