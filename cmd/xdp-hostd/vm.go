package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/xdp-hostd/xdp-hostd/client"
	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
)

const vmUsage = `usage: xdp-hostd vm COMMAND
  add --uplink IF --name NAME --mac MAC [--uuid UUID] [--queues 1,2] [--delivery tap|vhost-user]
      [--tap NAME] [--tap-queues N] [--tap-mode qemu|external|held] [--vhost-user-socket PATH] [--agent-socket PATH]
                                              --tap-mode qemu (default): the daemon creates a tap QEMU opens
                                              (-netdev tap,ifname=NAME, see qemu-args); external: QEMU or
                                              libvirt creates it, then 'vm tap'; held: the daemon holds it
  tap NAME TAP                                give a VM with --tap-mode external the tap QEMU created
  rm NAME
  list [--json]
  attach --qmp PATH [--id ID] [--bus BUS] [--json] NAME
                                              hot-plug the VM's vhost-user NIC into its running QEMU
                                              (pc: root bus; q35: a free pcie-root-port, or --bus)
  detach --qmp PATH [--id ID] [--json] NAME   unplug it
  check --qmp PATH [--json] NAME              QEMU's status and NICs; fails if none has the VM's MAC
  show [--json] NAME
all take --socket PATH (default ` + daemon.DefaultSocket + `)`

const portUsage = `usage: xdp-hostd port COMMAND
  add --vm VM --port N --ifname IF [--cross-vm]
                                      add IF to the VM's port table as port N (1-63; 0 is the uplink);
                                      IF may be another VM's tap only with --cross-vm (a port into that VM)
  rm --vm VM --port N
  list [--json] --vm VM
all take --socket PATH (default ` + daemon.DefaultSocket + `)`

func runVM(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(e.stderr, vmUsage)
		if len(args) == 0 {
			return fmt.Errorf("%w: name a vm command", errUsage)
		}
		return nil
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "attach", "detach", "check":
		return runVMQMP(ctx, e, sub, args)
	}
	fs := newFlags(e, "vm "+sub, "vm "+sub+" (see xdp-hostd vm -h)")
	socket := fs.String("socket", daemon.DefaultSocket, "the daemon's API socket")
	asJSON := fs.Bool("json", false, "print JSON")
	var vc daemon.VMConfig
	var uplink, queues string
	if sub == "add" {
		fs.StringVar(&uplink, "uplink", "", "the uplink the VM's traffic arrives on")
		fs.StringVar(&vc.Name, "name", "", "the VM's name")
		fs.StringVar(&vc.MAC, "mac", "", "the VM's MAC address")
		fs.StringVar(&vc.UUID, "uuid", "", "the VM's UUID (optional)")
		fs.StringVar(&queues, "queues", "", "dedicated uplink RX queues, comma-separated")
		fs.StringVar(&vc.Delivery, "delivery", "tap", "tap or vhost-user")
		fs.StringVar(&vc.Tap, "tap", "", "the VM's tap (adopted if it exists)")
		fs.IntVar(&vc.TapQueues, "tap-queues", 0, "queues of a tap the daemon creates")
		fs.StringVar(&vc.TapMode, "tap-mode", "qemu", "who opens the tap: qemu (the daemon creates a tap QEMU's -netdev tap,ifname= opens), external (QEMU or libvirt creates it; see vm tap) or held (the daemon holds it)")
		fs.StringVar(&vc.VhostUserSocket, "vhost-user-socket", "", "where to serve the VM's vhost-user device")
		fs.StringVar(&vc.AgentSocket, "agent-socket", "", "where to serve the VM's guest agent channel (QEMU's virtio-serial chardev)")
	}
	if err := fs.Parse(args); err != nil {
		return flagErr(err)
	}
	rest := fs.Args()
	c := client.New(*socket)
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	switch sub {
	case "add":
		if uplink == "" || vc.Name == "" || vc.MAC == "" || len(rest) > 0 {
			return fmt.Errorf("%w: --uplink, --name and --mac are required (xdp-hostd vm -h)", errUsage)
		}
		for _, q := range strings.Split(queues, ",") {
			if q = strings.TrimSpace(q); q == "" {
				continue
			}
			n, err := strconv.Atoi(q)
			if err != nil {
				return fmt.Errorf("%w: --queues: %q is not a queue number", errUsage, q)
			}
			vc.Queues = append(vc.Queues, n)
		}
		if vc.Delivery == "tap" {
			vc.Delivery = ""
		}
		if vc.TapMode == "held" || vc.Delivery != "" {
			vc.TapMode = ""
		}
		vs, err := c.AddVM(ctx, uplink, vc)
		if err != nil {
			return err
		}
		return printVMs(e.stdout, *asJSON, []daemon.VMStatus{*vs})
	case "rm":
		if len(rest) != 1 {
			return fmt.Errorf("%w: name one VM", errUsage)
		}
		if err := c.RemoveVM(ctx, rest[0]); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "removed VM %s\n", rest[0])
		return nil
	case "tap":
		if len(rest) != 2 {
			return fmt.Errorf("%w: vm tap VM TAP", errUsage)
		}
		vs, err := c.AttachTap(ctx, rest[0], rest[1], nil)
		if err != nil {
			return err
		}
		return printVMs(e.stdout, *asJSON, []daemon.VMStatus{*vs})
	case "list":
		vms, err := c.VMs(ctx)
		if err != nil {
			return err
		}
		return printVMs(e.stdout, *asJSON, vms)
	case "show":
		if len(rest) != 1 {
			return fmt.Errorf("%w: name one VM", errUsage)
		}
		vs, err := c.VM(ctx, rest[0])
		if err != nil {
			return err
		}
		return printVMs(e.stdout, *asJSON, []daemon.VMStatus{*vs})
	}
	fmt.Fprintln(e.stderr, vmUsage)
	return fmt.Errorf("%w: unknown vm command %q", errUsage, sub)
}

func printVMs(w io.Writer, asJSON bool, vms []daemon.VMStatus) error {
	if asJSON {
		return printJSON(w, vms)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tUPLINK\tMAC\tQUEUES\tDELIVERY\tDEVICE\tPROGRAM\tPORTS\tPASS\tDROP")
	for _, v := range vms {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%s\t%s\t%d\t%d\t%d\n", v.Name, v.Uplink, v.MAC, v.Queues, v.Delivery, deviceColumn(v), programColumn(v), len(v.Ports), v.Verdicts.Pass.Packets, v.Verdicts.Drop.Packets)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, v := range vms {
		if v.ProgramProblem != "" {
			fmt.Fprintf(w, "VM %s, program %d: %s\n", v.Name, v.Program, v.ProgramProblem)
		}
		printWarnings(w, v)
		printZeroCopy(w, v)
		if d := noFrontEndFor(v); d >= longNoFrontEnd {
			fmt.Fprintf(w, "VM %s: no front-end for %v on %s: its QEMU is not connected (after a daemon restart QEMU reconnects only with reconnect=N on its chardev, in libvirt <reconnect enabled='yes' timeout='N'/> in the interface's <source>)\n",
				v.Name, d, v.VhostUserSocket)
		}
		if v.TapWaiting {
			fmt.Fprintf(w, "VM %s: waiting for its tap (tap_mode %s): frames to it are not delivered until libvirt or QEMU creates the tap and it is attached (the libvirt hook's started call, or POST /v1/vms/%s/tap)\n", v.Name, v.TapMode, v.Name)
		}
	}
	return nil
}

// printWarnings prints what the daemon warns about a VM (devices that drop
// the frames it redirects into them).
func printWarnings(w io.Writer, v daemon.VMStatus) {
	for _, s := range v.Warnings {
		fmt.Fprintf(w, "VM %s: WARNING: %s\n", v.Name, s)
	}
}

// deviceColumn is what a table shows of where a VM's frames go: its tap, or
// whether a front-end is on its vhost-user socket (and how often one of its
// virtqueues broke).
func deviceColumn(v daemon.VMStatus) string {
	breaks := ""
	if v.VhostQueueBreaks > 0 {
		breaks = fmt.Sprintf(", %d queue breaks", v.VhostQueueBreaks)
	}
	switch {
	case v.Tap != "":
		return v.Tap
	case v.Delivery == "vhost-user" && v.FrontEndConnected:
		return "front-end connected" + breaks
	case v.Delivery == "vhost-user" && noFrontEndFor(v) >= longNoFrontEnd:
		return fmt.Sprintf("no front-end for %v", noFrontEndFor(v)) + breaks
	case v.Delivery == "vhost-user":
		return "no front-end" + breaks
	case v.TapWaiting:
		return "waiting for tap"
	}
	return "-"
}

// longNoFrontEnd is how long a vhost-user VM may be without a front-end
// before the tables point it out: QEMU connects at start and reconnects
// within seconds when it has reconnect=N.
const longNoFrontEnd = 30 * time.Second

func noFrontEndFor(v daemon.VMStatus) time.Duration {
	if v.Delivery != "vhost-user" || v.FrontEndConnected {
		return 0
	}
	return time.Duration(v.NoFrontEndSeconds) * time.Second
}

// programColumn is a VM's program in a table: its ID, or built-in.
func programColumn(v daemon.VMStatus) string {
	switch {
	case v.Program == 0:
		return "built-in"
	case strings.HasPrefix(v.ProgramProblem, "fail closed"):
		return strconv.FormatUint(v.Program, 10) + " (FAIL-CLOSED)"
	case v.ProgramProblem != "":
		return strconv.FormatUint(v.Program, 10) + " (kept from pins)"
	}
	return strconv.FormatUint(v.Program, 10)
}

// printJSON writes v as indented JSON, the form every --json prints.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func runPort(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(e.stderr, portUsage)
		if len(args) == 0 {
			return fmt.Errorf("%w: name a port command", errUsage)
		}
		return nil
	}
	sub, args := args[0], args[1:]
	fs := newFlags(e, "port "+sub, "port "+sub+" (see xdp-hostd port -h)")
	socket := fs.String("socket", daemon.DefaultSocket, "the daemon's API socket")
	asJSON := fs.Bool("json", false, "print JSON")
	vm := fs.String("vm", "", "the VM")
	port := fs.Int("port", -1, "the port number (1-63)")
	ifname := fs.String("ifname", "", "the interface")
	crossVM := fs.Bool("cross-vm", false, "allow the interface to be another VM's tap (a port into that VM)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *vm == "" {
		return fmt.Errorf("%w: --vm is required", errUsage)
	}
	c := client.New(*socket)
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var ports []hostnet.Port
	var err error
	switch sub {
	case "add":
		if *port < 0 || *ifname == "" {
			return fmt.Errorf("%w: --port and --ifname are required", errUsage)
		}
		ports, err = c.AddPortRequest(ctx, *vm, daemon.AddPortRequest{Port: uint32(*port), Ifname: *ifname, CrossVM: *crossVM})
	case "rm":
		if *port < 0 {
			return fmt.Errorf("%w: --port is required", errUsage)
		}
		if err := c.RemovePort(ctx, *vm, uint32(*port)); err != nil {
			return err
		}
		ports, err = c.Ports(ctx, *vm)
	case "list":
		ports, err = c.Ports(ctx, *vm)
	default:
		fmt.Fprintln(e.stderr, portUsage)
		return fmt.Errorf("%w: unknown port command %q", errUsage, sub)
	}
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(e.stdout, ports)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PORT\tINTERFACE\tIFINDEX\tINTO VM")
	for _, p := range ports {
		into := "-"
		if p.VM != "" {
			into = p.VM
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\n", p.Number, p.Ifname, p.Ifindex, into)
	}
	return tw.Flush()
}

// printZeroCopy prints a zero-copy VM's state: per queue pair whether the
// guest's memory is the AF_XDP UMEM now, why not, and what was refused.
func printZeroCopy(w io.Writer, v daemon.VMStatus) {
	z := v.ZeroCopy
	if z == nil || z.Mode != "zerocopy" {
		return
	}
	s := z.Stats
	fmt.Fprintf(w, "VM %s: delivery mode zerocopy, active per queue pair %v; delivered %d, guest buffers refused %d (chain %d, tiny %d, outside %d, overlapping %d), starved %d, frames without a guest buffer %d, too large %d\n",
		v.Name, z.Active, s.Delivered, s.RefusedChain+s.RefusedTiny+s.RefusedOutside+s.RefusedOverlap,
		s.RefusedChain, s.RefusedTiny, s.RefusedOutside, s.RefusedOverlap, s.Starved, s.FillRingEmpty, s.KernelDropped)
	if z.Fallback != "" {
		fmt.Fprintf(w, "VM %s: zero-copy fell back to copy: %s\n", v.Name, z.Fallback)
	}
}
