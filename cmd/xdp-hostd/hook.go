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

// hookTimeout bounds a hook call: libvirt waits for it.
const hookTimeout = 20 * time.Second

// runHook is libvirt's hook: /etc/libvirt/hooks/qemu runs
// `xdp-hostd hook qemu DOMAIN OPERATION SUBOPERATION EXTRA` with the domain
// XML on stdin. XDP_HOSTD_SOCKET overrides the daemon's socket.
func runHook(ctx context.Context, e *env, args []string) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Fprintln(e.stderr, `usage: xdp-hostd hook qemu DOMAIN OPERATION SUBOPERATION [EXTRA]   (domain XML on stdin)
install as /etc/libvirt/hooks/qemu:
  #!/bin/sh
  exec /usr/local/bin/xdp-hostd hook qemu "$@"
mark a domain's interfaces for xdp-hostd in its metadata (see package libvirthook):
  <metadata><xh:xdp-hostd xmlns:xh="`+libvirthook.Namespace+`">
    <xh:interface mac="52:54:00:00:00:01" uplink="eth1" queues="1"/></xh:xdp-hostd></metadata>`)
		return nil
	}
	if len(args) < 4 || args[0] != "qemu" {
		return fmt.Errorf("%w: want: hook qemu DOMAIN OPERATION SUBOPERATION [EXTRA]", errUsage)
	}
	op, subop := args[2], args[3]
	socket := os.Getenv("XDP_HOSTD_SOCKET")
	if socket == "" {
		socket = daemon.DefaultSocket
	}
	ctx, cancel := context.WithTimeout(ctx, hookTimeout)
	defer cancel()
	logf := func(format string, a ...any) { fmt.Fprintf(e.stderr, format+"\n", a...) }
	return libvirthook.Run(ctx, client.New(socket), op, subop, e.stdin, logf)
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
		dev := "virtio-net-pci,netdev=xhnet0,mac=" + vm.MAC
		if q > 1 {
			dev += fmt.Sprintf(",mq=on,vectors=%d", 2*q+2)
		}
		a = append(a, "-device", dev)
	default:
		a = []string{"-netdev", "tap,id=xhnet0,ifname=" + vm.Tap + ",script=no,downscript=no", "-device", "virtio-net-pci,netdev=xhnet0,mac=" + vm.MAC}
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
