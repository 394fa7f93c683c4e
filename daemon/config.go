// Package daemon is xdp-hostd's long-running service: it reads the
// configuration, takes over the uplinks it names, sets up their VMs and
// keeps them until it is told to stop.
package daemon

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/xdp-hostd/xdp-hostd/guestprog"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/vmport"
)

// Config is the daemon's configuration file (JSON). See
// examples/xdp-hostd.json.
type Config struct {
	// PinDir is a directory on a BPF filesystem where each uplink's link
	// and maps are pinned (in a subdirectory named after the uplink).
	// Empty: no pins. The BPF filesystem is mounted if missing.
	PinDir string `json:"pin_dir,omitempty"`
	// StateDir is where the daemon keeps its state (VMs, ports, programs
	// and their objects, the program ID counter), so that a restart brings
	// them back. Empty: nothing survives the daemon. With PinDir as well,
	// stopping the daemon leaves the dataplane forwarding on its pins; the
	// next start adopts it ('xdp-hostd down' removes it).
	StateDir string `json:"state_dir,omitempty"`
	// MaxCostInstructions is every VM program's budget of worst-case cost
	// per packet, in instructions, as the policy computes it (loop counts
	// times callback size, tail-call chains; see 'xdp-hostd caps').
	// 0: guestprog.DefaultMaxCost.
	MaxCostInstructions uint64 `json:"max_cost_instructions,omitempty"`
	// MaxNSPerPacket is the run-time budget: the mean time a VM's program
	// may take per packet, measured by the host frame (one packet in 64).
	// 0: measured and reported only.
	MaxNSPerPacket float64 `json:"max_ns_per_packet,omitempty"`
	// EnforceNSPerPacket swaps a program over MaxNSPerPacket (over a window
	// of a second) back to the built-in one, logged and audited; without
	// it the daemon warns.
	EnforceNSPerPacket bool `json:"enforce_ns_per_packet,omitempty"`
	// VMSocketDirs are the directories VMs' vhost-user and agent sockets
	// must be in (subdirectories included, symbolic links resolved, '..'
	// refused). Empty: DefaultVMSocketDirs.
	VMSocketDirs []string `json:"vm_socket_dirs,omitempty"`
	// VMSocketOwner, VMSocketGroup and VMSocketMode are given to every VM
	// socket the daemon serves (user and group names or numeric IDs, an
	// octal mode), so that QEMU, which libvirt runs unprivileged, may
	// connect. Defaults: DefaultQEMUUser and DefaultQEMUGroup where they
	// exist (else root), mode 0660. A mode open to every user is refused.
	VMSocketOwner string         `json:"vm_socket_owner,omitempty"`
	VMSocketGroup string         `json:"vm_socket_group,omitempty"`
	VMSocketMode  string         `json:"vm_socket_mode,omitempty"`
	Uplinks       []UplinkConfig `json:"uplinks"`

	// APISocket is the path of the daemon's API socket, which no VM socket
	// may take (DefaultSocket is always protected too). Run sets it.
	APISocket string `json:"-"`
}

// DefaultVMSocketDirs are where VM sockets may be when the configuration
// does not say: xdp-hostd's own directory for them, and the two libvirt's
// QEMU driver keeps per-domain files in (its state and runtime
// directories on Debian). Not /tmp, where libvirt's documentation puts its
// vhost-user examples: anybody may create files there.
var DefaultVMSocketDirs = []string{"/run/xdp-hostd/vms", "/run/libvirt/qemu", "/var/lib/libvirt/qemu"}

// SocketDirs are the directories VM sockets may be in.
func (c *Config) SocketDirs() []string {
	if len(c.VMSocketDirs) == 0 {
		return DefaultVMSocketDirs
	}
	return c.VMSocketDirs
}

// UplinkConfig is one uplink and the VMs behind it.
type UplinkConfig struct {
	Name string `json:"name"`
	// NetNS is the path of the uplink's network namespace; empty: the
	// daemon's own.
	NetNS string `json:"netns,omitempty"`
	// XDPMode is auto (default), native or generic.
	XDPMode string `json:"xdp_mode,omitempty"`
	// Force takes over an uplink that already runs an XDP program attached
	// through netlink (never one held by a bpf_link).
	Force bool       `json:"force,omitempty"`
	VMs   []VMConfig `json:"vms"`
}

// VMConfig is one VM.
type VMConfig struct {
	Name string `json:"name"`
	// UUID is the VM's UUID (libvirt's domain UUID), for people and tools
	// that know VMs by it; optional.
	UUID   string `json:"uuid,omitempty"`
	MAC    string `json:"mac"`
	Queues []int  `json:"queues,omitempty"`
	// Delivery is "tap" (default: copy into a tap) or "vhost-user" (the
	// daemon is the VM's virtio-net device on VhostUserSocket, fed from
	// AF_XDP sockets on the VM's dedicated queues, which are then required).
	Delivery string `json:"delivery,omitempty"`
	// VhostUserSocket is where the daemon serves the VM's vhost-user device
	// (QEMU: -chardev socket,id=c0,path=SOCKET -netdev
	// vhost-user,id=n0,chardev=c0,queues=N). One queue pair per dedicated queue.
	// It must be inside one of the VMSocketDirs, and never another
	// program's or another VM's socket (see claimSocket).
	VhostUserSocket string `json:"vhost_user_socket,omitempty"`
	// AgentSocket, if set, is where the daemon serves the VM's guest agent
	// channel: QEMU connects a virtio-serial port named
	// org.xdp-hostd.agent.0 to it (-chardev
	// socket,id=xha,path=SOCKET,reconnect=1 -device
	// virtserialport,chardev=xha,name=org.xdp-hostd.agent.0; see
	// 'xdp-hostd qemu-args'). The agent in the VM then manages that VM's
	// program, and only that VM's. Like VhostUserSocket, it must be inside
	// one of the VMSocketDirs and nobody else's.
	AgentSocket string `json:"agent_socket,omitempty"`
	// BusyPollMicros, for vhost-user VMs: spin this long for more frames
	// before sleeping (lower latency, a CPU burnt). 0: event-driven only.
	BusyPollMicros int `json:"busy_poll_us,omitempty"`
	// DeliveryMode, for vhost-user VMs: "copy" (default: frames are copied
	// from the daemon's AF_XDP memory into the guest's buffers) or
	// "zerocopy" (the kernel writes them straight into the guest's
	// buffers: the AF_XDP socket's UMEM is the guest's memory; falls back to
	// copy with a logged reason when the guest memory or the kernel cannot
	// do it; see README "Zero-copy delivery").
	DeliveryMode string `json:"delivery_mode,omitempty"`
	// Tap is the name of the tap the daemon creates (default
	// "xh<slot>-<uplink>"); TapQueues its number of queues (default 1).
	Tap       string `json:"tap,omitempty"`
	TapQueues int    `json:"tap_queues,omitempty"`
	// TapMode is who opens the tap the daemon creates: "" (the daemon
	// holds its queues: for tests and the demo), "qemu" (a persistent tap
	// with QEMU's flags that QEMU's -netdev tap,ifname=NAME or libvirt's
	// managed='no' opens; removed with the VM) or "external" (libvirt or
	// QEMU creates it; the daemon adopts it when told it exists, POST
	// /v1/vms/{vm}/tap, which the libvirt hook's started call does). A tap
	// that exists already is adopted whatever the mode.
	TapMode string `json:"tap_mode,omitempty"`
	// Ports are extra ports of the VM's port table: port number (1-63) ->
	// interface name. Port 0 is always the uplink.
	Ports map[string]string `json:"ports,omitempty"`
	// CrossVMPorts are the ports of Ports that may be another VM's tap (a
	// port into another VM, which its program can then send straight
	// into). Any other port that is another VM's tap is refused.
	CrossVMPorts []uint32 `json:"cross_vm_ports,omitempty"`

	// closed starts the VM with the drop program (a VM arriving by
	// migration; see hostnet.VMSpec.Closed). Never in a file.
	closed bool
}

var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("configuration error")

// LoadConfig reads and validates a configuration file.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %w", ErrConfig, path, err)
	}
	return ParseConfig(b, path)
}

// ParseConfig parses and validates a configuration; name is used in errors.
func ParseConfig(b []byte, name string) (*Config, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			line := bytes.Count(b[:min(int(se.Offset), len(b))], []byte("\n")) + 1
			return nil, fmt.Errorf("%w: %s line %d: %v", ErrConfig, name, line, err)
		}
		return nil, fmt.Errorf("%w: %s: %v", ErrConfig, name, err)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrConfig, name, err)
	}
	return &c, nil
}

// Validate checks the configuration; errors name the field at fault.
func (c *Config) Validate() error {
	if len(c.Uplinks) == 0 {
		return errors.New("uplinks: name at least one uplink")
	}
	for i, dir := range c.VMSocketDirs {
		if !filepath.IsAbs(dir) || hasDotDot(dir) {
			return fmt.Errorf("vm_socket_dirs[%d]: %q: give an absolute path without '..' (such as /run/xdp-hostd/vms)", i, dir)
		}
		if filepath.Clean(dir) == "/" {
			return fmt.Errorf("vm_socket_dirs[%d]: \"/\" would let a VM's socket be anywhere: name the directories VM sockets go in (such as /run/xdp-hostd/vms)", i)
		}
	}
	if _, err := c.socketPerm(); err != nil {
		return err
	}
	uplinks := map[string]bool{}
	vms := map[string]string{}
	for i, u := range c.Uplinks {
		at := fmt.Sprintf("uplinks[%d]", i)
		if u.Name == "" {
			return fmt.Errorf("%s.name: required (the network interface the VMs' traffic arrives on)", at)
		}
		key := u.NetNS + "/" + u.Name
		if uplinks[key] {
			return fmt.Errorf("%s.name: uplink %q is listed twice", at, u.Name)
		}
		uplinks[key] = true
		if u.XDPMode != "" {
			if _, err := hostnet.ParseAttachMode(u.XDPMode); err != nil {
				return fmt.Errorf("%s.xdp_mode: %v", at, err)
			}
		}
		for j, vm := range u.VMs {
			vat := fmt.Sprintf("%s.vms[%d]", at, j)
			if other, ok := vms[vm.Name]; ok {
				return fmt.Errorf("%s.name: VM %q is already defined at %s", vat, vm.Name, other)
			}
			vms[vm.Name] = vat
			if err := vm.validate(); err != nil {
				return fmt.Errorf("%s: %w", vat, err)
			}
			for field, p := range map[string]string{"vhost_user_socket": vm.VhostUserSocket, "agent_socket": vm.AgentSocket} {
				if p == "" {
					continue
				}
				r, err := resolveSocketPath(p)
				if hasDotDot(p) || err != nil || !socketAllowed(r, c.SocketDirs()) {
					return fmt.Errorf("%s.%s: %s is outside the directories VM sockets may be in (vm_socket_dirs: %s): put it under one of them, or add its directory to vm_socket_dirs",
						vat, field, p, strings.Join(c.SocketDirs(), ", "))
				}
			}
		}
	}
	return nil
}

// validate checks one VM's fields; errors name the field.
func (vm *VMConfig) validate() error {
	if _, err := vm.spec(); err != nil {
		return err
	}
	switch vm.Delivery {
	case "", "tap":
		if vm.VhostUserSocket != "" {
			return errors.New(`vhost_user_socket: only for "delivery": "vhost-user"`)
		}
		if vm.DeliveryMode != "" && vm.DeliveryMode != vmport.ModeCopy {
			return fmt.Errorf(`delivery_mode: %q needs "delivery": "vhost-user" (a tap is always fed by copy)`, vm.DeliveryMode)
		}
		switch vm.TapMode {
		case "", "qemu", "external":
		default:
			return fmt.Errorf(`tap_mode: %q: use "qemu" (the daemon creates a tap QEMU opens), "external" (libvirt or QEMU creates it; the daemon adopts it) or leave it out (the daemon holds the tap)`, vm.TapMode)
		}
	case "vhost-user":
		if vm.VhostUserSocket == "" {
			return fmt.Errorf("vhost_user_socket: required with vhost-user delivery (a path such as /run/xdp-hostd/vms/%s.sock)", vm.Name)
		}
		if !filepath.IsAbs(vm.VhostUserSocket) {
			return fmt.Errorf("vhost_user_socket: %q: give an absolute path (such as /run/xdp-hostd/vms/%s.sock)", vm.VhostUserSocket, vm.Name)
		}
		if len(vm.Queues) == 0 {
			return errors.New("queues: vhost-user delivery needs at least one dedicated queue")
		}
		if err := vmport.ValidMode(vm.DeliveryMode); err != nil {
			return fmt.Errorf("delivery_mode: %w", err)
		}
		if vm.Tap != "" || vm.TapQueues != 0 || vm.TapMode != "" {
			return errors.New("tap: a vhost-user VM has no tap")
		}
		if vm.BusyPollMicros < 0 || vm.BusyPollMicros > 1000000 {
			return errors.New("busy_poll_us: use 0 to 1000000")
		}
	default:
		return fmt.Errorf(`delivery: %q: use "tap" or "vhost-user"`, vm.Delivery)
	}
	if _, err := vm.ports(); err != nil {
		return fmt.Errorf("ports: %w", err)
	}
	for _, n := range vm.CrossVMPorts {
		if _, ok := vm.Ports[strconv.FormatUint(uint64(n), 10)]; !ok {
			return fmt.Errorf("cross_vm_ports: port %d is not in ports", n)
		}
	}
	if vm.UUID != "" && !uuidRE.MatchString(vm.UUID) {
		return fmt.Errorf("uuid: %q is not a UUID (write it as 4b5a9c1e-0f3d-4c5e-9a7b-1d2e3f405162)", vm.UUID)
	}
	if vm.AgentSocket != "" && !filepath.IsAbs(vm.AgentSocket) {
		return fmt.Errorf("agent_socket: %q: give an absolute path (such as /run/xdp-hostd/vms/%s.agent.sock)", vm.AgentSocket, vm.Name)
	}
	return nil
}

func (vm *VMConfig) spec() (hostnet.VMSpec, error) {
	mac, err := ParseMAC(vm.MAC)
	if err != nil {
		return hostnet.VMSpec{}, fmt.Errorf("mac: %w", err)
	}
	s := hostnet.VMSpec{Name: vm.Name, MAC: mac, Queues: vm.Queues, Tap: vm.Tap, TapQueues: vm.TapQueues, TapMode: hostnet.TapMode(vm.TapMode), Closed: vm.closed}
	if vm.Delivery == "vhost-user" {
		s.Delivery = guestprog.DeliverXSK
	}
	if err := s.Validate(); err != nil {
		return s, specError{err}
	}
	return s, nil
}

// ParseMAC parses a VM's MAC address. Its errors quote the address once
// and say what a VM's MAC must be: six bytes, unicast, not all zeros.
func ParseMAC(s string) (net.HardwareAddr, error) {
	const form = "six hex bytes such as 52:54:00:12:34:56"
	mac, err := net.ParseMAC(s)
	switch {
	case s == "":
		return nil, fmt.Errorf("none given: a VM needs its MAC address, %s", form)
	case err != nil || len(mac) != 6:
		return nil, fmt.Errorf("%q is not an Ethernet MAC address: write %s", s, form)
	case mac[0]&1 != 0:
		return nil, fmt.Errorf("%q is a multicast address: a VM needs a unicast MAC (first byte even), %s", s, form)
	case slices.Equal(mac, make(net.HardwareAddr, 6)):
		return nil, fmt.Errorf("%q is all zeros: a VM needs a real MAC address, %s", s, form)
	}
	return mac, nil
}

// specError is a hostnet.ErrInvalid about a VM's spec, shown as a
// configuration error: without hostnet's "invalid request: " prefix (the
// daemon adds its own, and a configuration file is not a request). It
// still matches hostnet.ErrInvalid.
type specError struct{ err error }

func (e specError) Error() string {
	return strings.TrimPrefix(e.err.Error(), hostnet.ErrInvalid.Error()+": ")
}

func (e specError) Unwrap() error { return e.err }

type portConfig struct {
	n      uint32
	ifname string
}

func (vm *VMConfig) ports() ([]portConfig, error) {
	var out []portConfig
	for k, ifname := range vm.Ports {
		n, err := strconv.ParseUint(k, 10, 32)
		if err != nil || n == hostnet.UplinkPort || n >= hostnet.MaxPorts {
			return nil, fmt.Errorf("port %q: use a number from 1 to %d (port 0 is the uplink)", k, hostnet.MaxPorts-1)
		}
		if ifname == "" {
			return nil, fmt.Errorf("port %s: name the interface", k)
		}
		out = append(out, portConfig{uint32(n), ifname})
	}
	return out, nil
}

// limits are the guest program limits the configuration asks for.
func (c *Config) limits() guestprog.Limits {
	return guestprog.Limits{MaxCost: c.MaxCostInstructions}
}
