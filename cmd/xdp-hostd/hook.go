package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/xdp-hostd/xdp-hostd/agentproto"
	"github.com/xdp-hostd/xdp-hostd/client"
	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/libvirthook"
)

// hookTimeout bounds a hook call: libvirt waits for it. Within it, the
// daemon must answer a first request within libvirthook.ProbeTimeout, so
// that a daemon that is down or hung costs each call seconds, not this.
const hookTimeout = 25 * time.Second

// hookScript is the file libvirt runs, /etc/libvirt/hooks/qemu, for a
// daemon on socket.
// With peers (the other hosts' daemon sockets, forwarded here), domains
// migrate with their programs (see the README, "Live migration").
func hookScript(binary, socket string, peers ...string) string {
	flags := ""
	for _, p := range peers {
		flags += " --peer " + p
	}
	return fmt.Sprintf("#!/bin/sh\n# xdp-hostd: register the domain's xdp-hostd interfaces (see 'xdp-hostd hook -h')\nexec %s hook --socket %s%s qemu \"$@\"\n", binary, socket, flags)
}

// runHook is libvirt's hook: /etc/libvirt/hooks/qemu runs
// `xdp-hostd hook [--socket PATH] qemu DOMAIN OPERATION SUBOPERATION EXTRA`
// with the domain XML on stdin. libvirt gives hooks no environment beyond
// LC_ALL, PATH and HOME: the daemon's socket is --socket (else
// XDP_HOSTD_SOCKET, else the default).
func runHook(ctx context.Context, e *env, args []string) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Fprintln(e.stderr, `usage: xdp-hostd hook [--socket PATH] [--peer PATH]... [--uplink-map FROM=TO]... qemu DOMAIN OPERATION SUBOPERATION [EXTRA]   (domain XML on stdin)
  --peer: another host's daemon API socket, forwarded here: domains migrate from and to it with their programs
  --uplink-map: this host's name for an uplink the domain metadata names otherwise
install as /etc/libvirt/hooks/qemu (mode 0755), then restart libvirtd (it reads hooks at start):
`+strings.TrimSpace(hookScript("/usr/local/bin/xdp-hostd", daemon.DefaultSocket))+`
mark a domain's interfaces for xdp-hostd in its metadata (see package libvirthook):
  <metadata><xh:xdp-hostd xmlns:xh="`+libvirthook.Namespace+`">
    <xh:interface mac="52:54:00:00:00:01" uplink="eth1" queues="1"/></xh:xdp-hostd></metadata>`)
		return nil
	}
	socket := os.Getenv("XDP_HOSTD_SOCKET")
	var opts libvirthook.Options
	for len(args) > 0 && strings.HasPrefix(args[0], "--") {
		flag, val, eq := strings.Cut(args[0], "=")
		if !eq {
			if len(args) < 2 {
				return fmt.Errorf("%w: %s needs a value", errUsage, flag)
			}
			val, args = args[1], args[1:]
		}
		args = args[1:]
		switch flag {
		case "--socket":
			socket = val
		case "--peer":
			opts.Peers = append(opts.Peers, libvirthook.Peer{Name: val, API: client.New(val)})
		case "--uplink-map":
			from, to, ok := strings.Cut(val, "=")
			if !ok || from == "" || to == "" {
				return fmt.Errorf("%w: --uplink-map %q: write METADATA_UPLINK=LOCAL_UPLINK, such as eth1=ens5", errUsage, val)
			}
			if opts.Uplinks == nil {
				opts.Uplinks = map[string]string{}
			}
			opts.Uplinks[from] = to
		default:
			return fmt.Errorf("%w: unknown flag %s; want: hook [--socket PATH] [--peer PATH]... [--uplink-map FROM=TO]... qemu DOMAIN OPERATION SUBOPERATION [EXTRA]", errUsage, flag)
		}
	}
	if len(args) < 4 || args[0] != "qemu" {
		return fmt.Errorf("%w: want: hook [--socket PATH] [--peer PATH]... [--uplink-map FROM=TO]... qemu DOMAIN OPERATION SUBOPERATION [EXTRA]", errUsage)
	}
	op, subop := args[2], args[3]
	if socket == "" {
		socket = daemon.DefaultSocket
	}
	ctx, cancel := context.WithTimeout(ctx, hookTimeout)
	defer cancel()
	logf := func(format string, a ...any) { fmt.Fprintf(e.stderr, format+"\n", a...) }
	return libvirthook.RunWith(ctx, client.New(socket), opts, op, subop, e.stdin, logf)
}

// runQEMUArgs prints the QEMU arguments that connect a registered
// vhost-user VM to the daemon, for users without libvirt.
func runQEMUArgs(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "qemu-args", "qemu-args [--socket PATH] [--memory SIZE] VM")
	socket := fs.String("socket", daemon.DefaultSocket, "the daemon's API socket")
	mem := fs.String("memory", "1G", "the guest's memory size (vhost-user needs it shared)")
	if err := fs.Parse(args); err != nil {
		return flagErr(err)
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: name one VM", errUsage)
	}
	vm, err := client.New(*socket).VM(ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	var a []string
	switch vm.Delivery {
	case "vhost-user":
		q := len(vm.Queues)
		a = []string{
			"-object", "memory-backend-memfd,id=xhmem,size=" + *mem + ",share=on", "-numa", "node,memdev=xhmem",
			"-chardev", "socket,id=xh0,path=" + vm.VhostUserSocket + ",reconnect=1",
			"-netdev", fmt.Sprintf("vhost-user,id=xhnet0,chardev=xh0,queues=%d", q),
		}
		// 1024 RX descriptors (QEMU's default is 256): the guest rides
		// out a moment off its CPU at millions of frames per second
		// without the daemon holding frames back.
		dev := "virtio-net-pci,netdev=xhnet0,mac=" + vm.MAC + ",rx_queue_size=1024"
		if q > 1 {
			dev += fmt.Sprintf(",mq=on,vectors=%d", 2*q+2)
		}
		a = append(a, "-device", dev)
	default:
		tap := vm.Tap
		switch vm.TapMode {
		case "qemu":
			// The daemon made a persistent tap with QEMU's flags and
			// holds none of its queues: QEMU opens it by name.
		case "external":
			// QEMU creates the tap; the daemon adopts it once told.
			if tap == "" {
				return fmt.Errorf("VM %s has no tap name: add it with --tap NAME", vm.Name)
			}
			defer fmt.Fprintf(e.stderr, "QEMU creates tap %s: once it runs, give it to the VM: xdp-hostd vm tap --socket %s %s %s\n", tap, *socket, vm.Name, tap)
		default:
			return fmt.Errorf("VM %s's tap %s is held by the daemon (no tap_mode: for readers inside the daemon's process), which QEMU cannot open: add the VM with --tap-mode qemu (\"tap_mode\": \"qemu\"), or let QEMU create the tap with --tap-mode external", vm.Name, tap)
		}
		a = []string{"-netdev", "tap,id=xhnet0,ifname=" + tap + ",script=no,downscript=no", "-device", "virtio-net-pci,netdev=xhnet0,mac=" + vm.MAC}
	}
	if vm.AgentSocket != "" {
		// The guest agent's channel: QEMU connects, and reconnects when
		// the daemon restarts.
		a = append(a, "-device", "virtio-serial-pci,id=xhser0",
			"-chardev", "socket,id=xhagent,path="+vm.AgentSocket+",reconnect=1",
			"-device", "virtserialport,bus=xhser0.0,chardev=xhagent,name="+agentproto.PortName)
	}
	fmt.Fprintln(e.stdout, strings.Join(a, " "))
	return nil
}
