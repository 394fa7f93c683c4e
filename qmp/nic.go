package qmp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"
)

// NIC is one virtio-net NIC of the VM.
type NIC struct {
	// ID is the device id (device_add id=, -device id=); for a device
	// created without an id it is QEMU's generated NIC name, such as
	// "virtio-net-pci.0", and Netdev and MAC come from query-rx-filter only.
	ID string
	// Netdev is the id of the NIC's backend (netdev=), if known.
	Netdev string
	// MAC is the address the NIC was configured with (mac=).
	MAC net.HardwareAddr
	// CurrentMAC is the address the guest driver uses now (query-rx-filter
	// main-mac); the guest may change it.
	CurrentMAC net.HardwareAddr
}

func (n NIC) String() string {
	return fmt.Sprintf("%s (netdev %q, mac %s, current mac %s)", n.ID, n.Netdev, n.MAC, n.CurrentMAC)
}

// NICs returns the VM's virtio-net NICs, sorted by ID: names and current
// MACs from query-rx-filter, netdev and configured MAC from the device's
// QOM properties under /machine/peripheral.
func (c *Client) NICs(ctx context.Context) ([]NIC, error) {
	var filters []struct {
		Name    string `json:"name"`
		MainMAC string `json:"main-mac"`
	}
	if err := c.Run(ctx, "query-rx-filter", nil, &filters); err != nil {
		return nil, fmt.Errorf("listing NICs: %w", err)
	}
	var periph []struct {
		Name string `json:"name"`
		Type string `json:"type"`
	}
	if err := c.Run(ctx, "qom-list", map[string]any{"path": "/machine/peripheral"}, &periph); err != nil {
		return nil, fmt.Errorf("listing NICs: %w", err)
	}
	devs := make(map[string]bool)
	for _, p := range periph {
		if strings.HasPrefix(p.Type, "child<") {
			devs[p.Name] = true
		}
	}
	var nics []NIC
	for _, f := range filters {
		n := NIC{ID: f.Name}
		if mac, err := net.ParseMAC(f.MainMAC); err == nil {
			n.CurrentMAC = mac
		}
		n.MAC = n.CurrentMAC
		if devs[f.Name] {
			path := "/machine/peripheral/" + f.Name
			var netdev, mac string
			if err := c.Run(ctx, "qom-get", map[string]any{"path": path, "property": "netdev"}, &netdev); err != nil {
				return nil, fmt.Errorf("NIC %s: %w", f.Name, err)
			}
			if err := c.Run(ctx, "qom-get", map[string]any{"path": path, "property": "mac"}, &mac); err != nil {
				return nil, fmt.Errorf("NIC %s: %w", f.Name, err)
			}
			n.Netdev = netdev
			if hw, err := net.ParseMAC(mac); err == nil {
				n.MAC = hw
			}
		}
		nics = append(nics, n)
	}
	sort.Slice(nics, func(i, j int) bool { return nics[i].ID < nics[j].ID })
	return nics, nil
}

// ErrMACNotFound is wrapped by CheckMAC's error when no NIC has the MAC.
var ErrMACNotFound = errors.New("no NIC with this MAC")

// CheckMAC verifies that the VM has a virtio-net NIC configured with mac
// (the MAC the daemon registered for the VM). The error names the NICs
// found instead.
func (c *Client) CheckMAC(ctx context.Context, mac net.HardwareAddr) error {
	nics, err := c.NICs(ctx)
	if err != nil {
		return fmt.Errorf("qmp: checking MAC %s: %w", mac, err)
	}
	var found []string
	for _, n := range nics {
		if macEqual(n.MAC, mac) {
			return nil
		}
		found = append(found, n.String())
	}
	if len(found) == 0 {
		return fmt.Errorf("qmp: VM has no NIC with MAC %s: %w; QEMU reports no virtio-net NICs at all", mac, ErrMACNotFound)
	}
	return fmt.Errorf("qmp: VM has no NIC with MAC %s: %w; found %s", mac, ErrMACNotFound, strings.Join(found, ", "))
}

func macEqual(a, b net.HardwareAddr) bool {
	return len(a) > 0 && strings.EqualFold(a.String(), b.String())
}

// AttachOptions describes a vhost-user virtio-net NIC to hot-plug.
type AttachOptions struct {
	// ID is the device id. The chardev is ID+"-chr", the netdev ID+"-net".
	// QEMU ids start with a letter and hold letters, digits, '-', '.', '_'.
	ID string
	// Socket is the vhost-user unix socket.
	Socket string
	// MAC is the NIC's MAC (required: it is how the daemon finds the VM's
	// NIC again).
	MAC net.HardwareAddr
	// Queues is the number of queue pairs (0 means 1); more turns on mq.
	Queues int
	// Server makes QEMU listen on Socket and the backend connect. QEMU's
	// monitor then blocks in netdev_add until the backend has connected.
	// Default: QEMU connects to the backend's socket and reconnects (every
	// Reconnect seconds) when the backend restarts.
	Server bool
	// Reconnect is the client-mode reconnect interval in seconds (0
	// means 1; negative means never reconnect).
	Reconnect int
	// Bus is the PCI bus to plug the NIC into (device_add bus=). Empty:
	// the root bus on the pc machine, the first free hot-pluggable PCIe
	// root port on q35 (see HotplugBus).
	Bus string
}

// ErrNoHotplugBus is wrapped by HotplugBus's error when a q35 machine has
// no free PCIe port that accepts hot-plug.
var ErrNoHotplugBus = errors.New("no free hot-pluggable PCIe root port")

// hotplugPorts are the QEMU device types of PCIe ports a device can be
// hot-plugged into (each takes one device).
var hotplugPorts = map[string]bool{"pcie-root-port": true, "ioh3420": true, "xio3130-downstream": true}

// HotplugBus returns the bus a hot-plugged PCI device should go to: "" (the
// root bus) on machines whose root bus takes hot-plug (pc), and on q35,
// whose root complex does not, the id of the first PCIe port (by id) that
// has no device behind it and hot-plug on. libvirt gives q35 domains such
// ports (<controller type='pci' model='pcie-root-port'/>); without one the
// error says how to add one.
//
// Ports and what sits behind them are read from QOM (a port's bus lists
// its devices as child[N] links), not from query-pci, which files a
// device hot-plugged before the guest numbered the buses under the wrong
// bridge.
func (c *Client) HotplugBus(ctx context.Context) (string, error) {
	var machine string
	if err := c.Run(ctx, "qom-get", map[string]any{"path": "/machine", "property": "type"}, &machine); err != nil {
		return "", fmt.Errorf("machine type: %w", err)
	}
	if !strings.Contains(machine, "q35") {
		return "", nil
	}
	type prop struct {
		Name string `json:"name"`
		Type string `json:"type"`
	}
	list := func(path string) ([]prop, error) {
		var props []prop
		err := c.Run(ctx, "qom-list", map[string]any{"path": path}, &props)
		return props, err
	}
	periph, err := list("/machine/peripheral")
	if err != nil {
		return "", fmt.Errorf("listing devices: %w", err)
	}
	var ports []string
	for _, p := range periph {
		if t, ok := strings.CutPrefix(p.Type, "child<"); ok && hotplugPorts[strings.TrimSuffix(t, ">")] {
			ports = append(ports, p.Name)
		}
	}
	sort.Strings(ports)
	var busy []string
	for _, id := range ports {
		path := "/machine/peripheral/" + id
		var hotplug bool
		if err := c.Run(ctx, "qom-get", map[string]any{"path": path, "property": "hotplug"}, &hotplug); err == nil && !hotplug {
			busy = append(busy, id+" (hotplug=off)")
			continue
		}
		props, err := list(path)
		if err != nil {
			return "", fmt.Errorf("PCIe port %s: %w", id, err)
		}
		bus := ""
		for _, p := range props {
			if p.Type == "child<PCIE>" || p.Type == "child<PCI>" {
				bus = path + "/" + p.Name
				break
			}
		}
		if bus == "" {
			continue
		}
		children, err := list(bus)
		if err != nil {
			return "", fmt.Errorf("PCIe port %s: %w", id, err)
		}
		taken := false
		for _, p := range children {
			taken = taken || strings.HasPrefix(p.Name, "child[")
		}
		if !taken {
			return id, nil
		}
		busy = append(busy, id)
	}
	have := "it has none"
	if len(busy) > 0 {
		have = "all are taken: " + strings.Join(busy, ", ")
	}
	return "", fmt.Errorf("%w on this %s machine (%s); its root complex takes no hot-plug. Give the VM a spare port: QEMU -device pcie-root-port,id=xhport0,chassis=N,slot=N; libvirt <controller type='pci' model='pcie-root-port'/>; or name a bus with --bus", ErrNoHotplugBus, machine, have)
}

// ErrNotShared is wrapped by CheckSharedMemory's error when guest memory is
// private to QEMU.
var ErrNotShared = errors.New("guest memory is not shared")

// CheckSharedMemory verifies that every memory backend of the VM is shared
// (share=on): a vhost-user back-end maps guest memory from the fds QEMU
// sends, and private memory has none, so the NIC could never move a frame.
func (c *Client) CheckSharedMemory(ctx context.Context) error {
	var mems []struct {
		ID    string `json:"id"`
		Share bool   `json:"share"`
	}
	if err := c.Run(ctx, "query-memdev", nil, &mems); err != nil {
		return fmt.Errorf("listing memory backends: %w", err)
	}
	var private []string
	for _, m := range mems {
		if !m.Share {
			private = append(private, m.ID)
		}
	}
	if len(mems) == 0 || len(private) > 0 {
		what := "it has no memory backend"
		if len(private) > 0 {
			what = "backend " + strings.Join(private, ", ") + " has share=off"
		}
		return fmt.Errorf("%w (%s), and a vhost-user NIC needs it: start QEMU with -object memory-backend-memfd,id=mem,size=SIZE,share=on -machine memory-backend=mem; libvirt <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>", ErrNotShared, what)
	}
	return nil
}

var idRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9._-]*$`)

// maxQueuePairs is the most queue pairs QEMU's virtio-net accepts.
const maxQueuePairs = 1024

func chardevID(id string) string { return id + "-chr" }
func netdevID(id string) string  { return id + "-net" }

// AttachVhostUser hot-plugs a virtio-net-pci NIC backed by the vhost-user
// socket o.Socket: chardev-add, netdev_add (type vhost-user) and device_add
// (vectors=0; mq=on with more than one queue pair). When a step fails, what
// was added before is removed again (chardev-remove, netdev_del), and the
// error names the failed step and, if it failed too, the rollback.
func (c *Client) AttachVhostUser(ctx context.Context, o AttachOptions) (err error) {
	if !idRE.MatchString(o.ID) {
		return fmt.Errorf("qmp: attach: invalid device id %q (a letter, then letters, digits, '-', '.', '_')", o.ID)
	}
	if o.Socket == "" {
		return fmt.Errorf("qmp: attach %s: no vhost-user socket", o.ID)
	}
	if len(o.MAC) != 6 {
		return fmt.Errorf("qmp: attach %s: need a 6-byte MAC, got %q", o.ID, o.MAC)
	}
	if o.MAC[0]&1 != 0 {
		return fmt.Errorf("qmp: attach %s: MAC %s is a multicast address", o.ID, o.MAC)
	}
	if o.Queues == 0 {
		o.Queues = 1
	}
	if o.Queues < 1 || o.Queues > maxQueuePairs {
		return fmt.Errorf("qmp: attach %s: queues %d out of range [1, %d]", o.ID, o.Queues, maxQueuePairs)
	}
	if o.Reconnect == 0 {
		o.Reconnect = 1
	}
	if !o.Server {
		// netdev_add would block QEMU's main loop until the backend answers.
		conn, derr := net.DialTimeout("unix", o.Socket, time.Second)
		if derr != nil {
			return fmt.Errorf("qmp: attach %s: vhost-user backend not accepting on %s: %w", o.ID, o.Socket, derr)
		}
		conn.Close()
	} else if _, serr := os.Stat(o.Socket); serr == nil {
		return fmt.Errorf("qmp: attach %s: server mode but %s already exists", o.ID, o.Socket)
	}
	if err := c.CheckSharedMemory(ctx); err != nil {
		return fmt.Errorf("qmp: attach %s: %w", o.ID, err)
	}
	bus := o.Bus
	if bus == "" {
		var err error
		if bus, err = c.HotplugBus(ctx); err != nil {
			return fmt.Errorf("qmp: attach %s: %w", o.ID, err)
		}
	}

	chr, nd := chardevID(o.ID), netdevID(o.ID)
	var undo []func(context.Context) error
	defer func() {
		if err == nil {
			return
		}
		// Roll back with a fresh bound: the caller's ctx may be what expired.
		rctx, cancel := c.bound(context.WithoutCancel(ctx))
		defer cancel()
		var rerrs []error
		for i := len(undo) - 1; i >= 0; i-- {
			if uerr := undo[i](rctx); uerr != nil && !isNotFound(uerr) {
				rerrs = append(rerrs, uerr)
			}
		}
		if len(rerrs) > 0 {
			err = fmt.Errorf("%w; rollback failed, remove by hand: %w", err, errors.Join(rerrs...))
		}
	}()

	sock := map[string]any{
		"addr": map[string]any{"type": "unix", "data": map[string]any{"path": o.Socket}},
	}
	if o.Server {
		sock["server"] = true
		sock["wait"] = false
	} else {
		sock["server"] = false
		if o.Reconnect > 0 {
			sock["reconnect"] = o.Reconnect
		}
	}
	if err := c.Run(ctx, "chardev-add", map[string]any{
		"id":      chr,
		"backend": map[string]any{"type": "socket", "data": sock},
	}, nil); err != nil {
		return fmt.Errorf("attach %s: adding chardev %s: %w", o.ID, chr, err)
	}
	undo = append(undo, func(ctx context.Context) error {
		return c.Run(ctx, "chardev-remove", map[string]any{"id": chr}, nil)
	})

	if err := c.Run(ctx, "netdev_add", map[string]any{
		"type":    "vhost-user",
		"id":      nd,
		"chardev": chr,
		"queues":  o.Queues,
	}, nil); err != nil {
		return fmt.Errorf("attach %s: adding netdev %s: %w", o.ID, nd, err)
	}
	undo = append(undo, func(ctx context.Context) error {
		return c.Run(ctx, "netdev_del", map[string]any{"id": nd}, nil)
	})

	dev := map[string]any{
		"driver":  "virtio-net-pci",
		"id":      o.ID,
		"netdev":  nd,
		"mac":     o.MAC.String(),
		"vectors": 0,
	}
	if o.Queues > 1 {
		dev["mq"] = true
	}
	if bus != "" {
		dev["bus"] = bus
	}
	if err := c.Run(ctx, "device_add", dev, nil); err != nil {
		return fmt.Errorf("attach %s: adding device: %w%s", o.ID, err, hotplugHint(err))
	}
	return nil
}

// hotplugHint says how to fix a device_add that failed for lack of PCI
// hot-plug: QEMU's pc machine hot-plugs through ACPI, which libvirt turns
// off (-no-acpi) for a domain without <features><acpi/>.
func hotplugHint(err error) string {
	if !strings.Contains(err.Error(), "does not support hotplugging") {
		return ""
	}
	return " (the VM's PCI bus takes no hot-plug: QEMU runs without ACPI, -no-acpi; with libvirt, add <features><acpi/></features> to the domain and start it again, or give the NIC in the domain XML instead of hot-plugging it)"
}

// ErrUnplugTimeout is wrapped by DetachVhostUser's error when the guest did
// not release the device in time.
var ErrUnplugTimeout = errors.New("guest did not release the device")

// DetachVhostUser unplugs the NIC id added by AttachVhostUser: device_del,
// then it waits for DEVICE_DELETED (until ctx's deadline, or for the
// Client's timeout when ctx has none), then netdev_del and chardev-remove. A device, netdev or chardev
// that is already gone is skipped, so a failed Detach can be repeated.
//
// PCI unplug needs the guest's cooperation (ACPI hotplug on the pc
// machine). When the guest does not release the device in time, the error
// wraps ErrUnplugTimeout and netdev and chardev stay, since the device still
// uses them.
func (c *Client) DetachVhostUser(ctx context.Context, id string) error {
	if !idRE.MatchString(id) {
		return fmt.Errorf("qmp: detach: invalid device id %q", id)
	}
	if _, ok := ctx.Deadline(); !ok {
		// The wait for the guest is bounded by ctx when it has a deadline
		// (a guest under TCG may take longer than one command), else by
		// the Client's timeout; each command by both.
		var cancel context.CancelFunc
		ctx, cancel = c.bound(ctx)
		defer cancel()
	}

	events, unsubscribe := c.subscribe()
	defer unsubscribe()
	gone := false
	if err := c.Run(ctx, "device_del", map[string]any{"id": id}, nil); err != nil {
		if !isNotFound(err) {
			return fmt.Errorf("detach %s: %w", id, err)
		}
		gone = true
	}
	for !gone {
		select {
		case ev := <-events:
			if ev.Event == "DEVICE_DELETED" && ev.Data["device"] == id {
				gone = true
			}
		case <-ctx.Done():
			// The event may have been missed (dropped): ask QEMU.
			if exists, err := c.deviceExists(context.WithoutCancel(ctx), id); err == nil && !exists {
				gone = true
				break
			}
			return fmt.Errorf("qmp: detach %s: %w within the time allowed (%w): the guest has no ACPI PCI hotplug support or is not running; netdev %s and chardev %s are left in place, detach again later",
				id, ErrUnplugTimeout, ctx.Err(), netdevID(id), chardevID(id))
		}
	}
	if err := c.Run(ctx, "netdev_del", map[string]any{"id": netdevID(id)}, nil); err != nil && !isNotFound(err) {
		return fmt.Errorf("detach %s: removing netdev: %w", id, err)
	}
	if err := c.Run(ctx, "chardev-remove", map[string]any{"id": chardevID(id)}, nil); err != nil && !isNotFound(err) {
		return fmt.Errorf("detach %s: removing chardev: %w", id, err)
	}
	return nil
}

// deviceExists reports whether /machine/peripheral has a child id.
func (c *Client) deviceExists(ctx context.Context, id string) (bool, error) {
	var periph []struct {
		Name string `json:"name"`
	}
	if err := c.Run(ctx, "qom-list", map[string]any{"path": "/machine/peripheral"}, &periph); err != nil {
		return false, err
	}
	for _, p := range periph {
		if p.Name == id {
			return true, nil
		}
	}
	return false, nil
}
