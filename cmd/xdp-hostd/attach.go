package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/xdp-hostd/xdp-hostd/client"
	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/qmp"
)

// QMPReport is what vm attach, detach and check print with --json.
type QMPReport struct {
	VM         string   `json:"vm"`
	Action     string   `json:"action"`
	Status     string   `json:"qemu_status"`
	MAC        string   `json:"registered_mac"`
	MACMatches bool     `json:"mac_matches"`
	NICs       []string `json:"nics"`
	Device     string   `json:"device,omitempty"`
}

// runVMQMP is vm attach|detach|check: the running QEMU of a registered VM,
// through its QMP socket.
func runVMQMP(ctx context.Context, e *env, sub string, args []string) error {
	fs := newFlags(e, "vm "+sub, "vm "+sub+" --qmp PATH [--id ID] [--bus BUS] [--json] VM")
	socket := fs.String("socket", daemon.DefaultSocket, "the daemon's API socket")
	qmpPath := fs.String("qmp", "", "the VM's QMP socket (QEMU: -qmp unix:PATH,server=on,wait=off)")
	id := fs.String("id", "xhnet0", "the QEMU device id of the NIC (its chardev is ID-chr, its netdev ID-net)")
	bus := fs.String("bus", "", "attach: the PCI bus to plug into (default: the root bus on pc, a free PCIe root port on q35)")
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for QEMU")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return flagErr(err)
	}
	if fs.NArg() != 1 || *qmpPath == "" {
		return fmt.Errorf("%w: vm %s needs --qmp PATH and one VM name", errUsage, sub)
	}
	name := fs.Arg(0)
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	vm, err := client.New(*socket).VM(ctx, name)
	if err != nil {
		return err
	}
	mac, err := net.ParseMAC(vm.MAC)
	if err != nil || len(mac) != 6 {
		return fmt.Errorf("VM %s has MAC %q, which is not an Ethernet MAC address", name, vm.MAC)
	}
	if _, err := os.Stat(*qmpPath); err != nil {
		return fmt.Errorf("QMP socket %s: %w (start QEMU with -qmp unix:%s,server=on,wait=off)", *qmpPath, err, *qmpPath)
	}
	q, err := qmp.Dial(*qmpPath, *timeout)
	if err != nil {
		return fmt.Errorf("VM %s: %w (is QEMU running, and no other client on its QMP socket?)", name, err)
	}
	defer q.Close()
	rep := QMPReport{VM: name, Action: sub, MAC: vm.MAC}
	switch sub {
	case "attach":
		if vm.Delivery != "vhost-user" {
			return fmt.Errorf("VM %s is delivered through tap %s, not vhost-user: give QEMU the tap (xdp-hostd qemu-args %s); only vhost-user NICs are hot-plugged", name, vm.Tap, name)
		}
		nics, err := q.NICs(ctx)
		if err != nil {
			return fmt.Errorf("VM %s: QEMU's NICs: %w", name, err)
		}
		already := false
		for _, n := range nics {
			switch {
			case n.ID == *id && n.MAC.String() == vm.MAC:
				already = true // attach again: nothing to do
			case n.ID == *id:
				return fmt.Errorf("VM %s: QEMU already has a NIC %s with MAC %s, not the VM's %s: give another --id, or detach that NIC first", name, *id, n.MAC, vm.MAC)
			case n.MAC.String() == vm.MAC:
				return fmt.Errorf("VM %s: QEMU already has NIC %s with the VM's MAC %s: if it is the VM's vhost-user NIC, it is attached (use --id %s); otherwise two NICs would share a MAC", name, n.ID, vm.MAC, n.ID)
			}
		}
		if already {
			fmt.Fprintf(e.stderr, "VM %s: NIC %s with MAC %s is already plugged into this QEMU; nothing to do\n", name, *id, vm.MAC)
		} else {
			// The daemon serves one front-end per socket. QEMU runs the
			// vhost-user handshake of netdev_add in its main loop, and
			// with reconnect it retries forever: attaching while another
			// front-end holds the socket would freeze this QEMU.
			if vm.FrontEndConnected {
				return fmt.Errorf("VM %s: a front-end is already connected to its vhost-user socket %s (another QEMU, or DPDK); a socket serves one at a time. Detach the NIC from the QEMU that holds it (xdp-hostd vm detach --qmp ITS-QMP-SOCKET %s), or stop that front-end, then attach again", name, vm.VhostUserSocket, name)
			}
			err = q.AttachVhostUser(ctx, qmp.AttachOptions{ID: *id, Socket: vm.VhostUserSocket, MAC: mac, Queues: len(vm.Queues), Bus: *bus})
			if err != nil {
				return fmt.Errorf("VM %s: hot-plug its vhost-user NIC: %w", name, err)
			}
		}
		rep.Device = *id
	case "detach":
		nics, err := q.NICs(ctx)
		if err != nil {
			return fmt.Errorf("VM %s: QEMU's NICs: %w", name, err)
		}
		for _, n := range nics {
			if n.ID == *id && n.MAC.String() != vm.MAC {
				return fmt.Errorf("VM %s: QEMU's NIC %s has MAC %s, not the VM's %s: not unplugging a NIC that is not this VM's (check --id and --qmp)", name, *id, n.MAC, vm.MAC)
			}
		}
		if err := q.DetachVhostUser(ctx, *id); err != nil {
			return fmt.Errorf("VM %s: unplug NIC %s: %w", name, *id, err)
		}
		rep.Device = *id
	}
	if rep.Status, err = q.Status(ctx); err != nil {
		return fmt.Errorf("VM %s: QEMU status: %w", name, err)
	}
	nics, err := q.NICs(ctx)
	if err != nil {
		return fmt.Errorf("VM %s: QEMU's NICs: %w", name, err)
	}
	for _, n := range nics {
		rep.NICs = append(rep.NICs, n.String())
	}
	macErr := q.CheckMAC(ctx, mac)
	rep.MACMatches = macErr == nil
	if *asJSON {
		if err := printJSON(e.stdout, rep); err != nil {
			return err
		}
	} else {
		switch sub {
		case "attach":
			fmt.Fprintf(e.stdout, "VM %s: vhost-user NIC %s (MAC %s, socket %s) plugged into QEMU\n", name, *id, vm.MAC, vm.VhostUserSocket)
		case "detach":
			fmt.Fprintf(e.stdout, "VM %s: NIC %s unplugged from QEMU\n", name, *id)
		}
		fmt.Fprintf(e.stdout, "QEMU status: %s\nNICs: %s\n", rep.Status, strings.Join(rep.NICs, "; "))
	}
	if macErr != nil && sub != "detach" {
		return fmt.Errorf("VM %s is registered with MAC %s, but its QEMU has no NIC with it: %w", name, vm.MAC, macErr)
	}
	return nil
}
