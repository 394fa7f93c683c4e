// Package libvirthook is xdp-hostd's libvirt hook: libvirt runs it as
// /etc/libvirt/hooks/qemu (through `xdp-hostd hook qemu`) with the domain
// XML on stdin; on prepare it registers the domain's xdp-hostd interfaces as
// VMs with the daemon, on release it removes them.
//
// Which interfaces are xdp-hostd's is said in the domain's metadata, in the
// namespace Namespace, one element per interface, matched by MAC:
//
//	<metadata>
//	  <xh:xdp-hostd xmlns:xh="https://xdp-hostd.dev/xmlns/domain/1">
//	    <xh:interface mac="52:54:00:00:00:01" uplink="eth1" queues="1,2"/>
//	  </xh:xdp-hostd>
//	</metadata>
//
// The interface itself says how the VM is delivered to:
//
//	<interface type='vhostuser'>                 vhost-user: the daemon serves the socket
//	  <mac address='52:54:00:00:00:01'/>
//	  <source type='unix' path='/run/xdp-hostd/vms/web1.sock' mode='client'/>
//	  <model type='virtio'/>
//	</interface>
//	<interface type='ethernet'>                  tap: libvirt creates the tap, the daemon adopts it
//	  <mac address='52:54:00:00:00:02'/>
//	  <target dev='web1-tap' managed='no'/>
//	</interface>
//
// The guest agent's channel, if the domain has one, is a virtio channel named
// org.xdp-hostd.agent.0 that QEMU connects to a socket the daemon serves; it
// goes to the domain's first xdp-hostd interface's VM:
//
//	<channel type='unix'>
//	  <source mode='connect' path='/run/xdp-hostd/vms/web1.agent.sock'>
//	    <reconnect enabled='yes' timeout='1'/>
//	  </source>
//	  <target type='virtio' name='org.xdp-hostd.agent.0'/>
//	</channel>
//
// Domains without the metadata are not xdp-hostd's: the hook exits at once
// without contacting the daemon.
package libvirthook

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"libvirt.org/go/libvirtxml"

	"github.com/xdp-hostd/xdp-hostd/agentproto"
	"github.com/xdp-hostd/xdp-hostd/client"
	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/guestprog"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
)

// Namespace is the XML namespace of xdp-hostd's domain metadata.
const Namespace = "https://xdp-hostd.dev/xmlns/domain/1"

// Metadata is the xdp-hostd element of a domain's metadata.
type Metadata struct {
	XMLName    xml.Name            `xml:"https://xdp-hostd.dev/xmlns/domain/1 xdp-hostd"`
	Interfaces []MetadataInterface `xml:"interface"`
}

// MetadataInterface marks one of the domain's interfaces for xdp-hostd.
type MetadataInterface struct {
	MAC    string `xml:"mac,attr"`
	Uplink string `xml:"uplink,attr"`
	Queues string `xml:"queues,attr,omitempty"` // comma-separated dedicated queues
}

// VM is a registration the hook derives from a domain.
type VM struct {
	Uplink string
	Config daemon.VMConfig
	// TargetDev is the interface's <target dev> as the XML has it (the tap
	// libvirt made, in the started call's XML).
	TargetDev string
}

// ErrDomain is wrapped by errors about the domain XML.
var ErrDomain = errors.New("domain XML")

// Parse reads a domain XML document and returns the VMs it asks xdp-hostd
// for (none for an unrelated domain). VM names are the domain's name, with
// "-N" for the N-th marked interface when there are several.
func Parse(r io.Reader) (string, []VM, error) {
	b, err := io.ReadAll(io.LimitReader(r, 16<<20))
	if err != nil {
		return "", nil, fmt.Errorf("%w: read: %w", ErrDomain, err)
	}
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(string(b)); err != nil {
		return "", nil, fmt.Errorf("%w: %w", ErrDomain, err)
	}
	var md Metadata
	if dom.Metadata != nil {
		// libvirtxml keeps metadata as raw XML.
		if err := findMetadata(dom.Metadata.XML, &md); err != nil {
			return dom.Name, nil, fmt.Errorf("%w: xdp-hostd metadata: %w", ErrDomain, err)
		}
	}
	if len(md.Interfaces) == 0 {
		return dom.Name, nil, nil
	}
	var ifaces []libvirtxml.DomainInterface
	if dom.Devices != nil {
		ifaces = dom.Devices.Interfaces
	}
	var vms []VM
	for i, m := range md.Interfaces {
		mac, err := net.ParseMAC(m.MAC)
		if err != nil || len(mac) != 6 {
			return dom.Name, nil, fmt.Errorf("%w: xdp-hostd interface %d: mac %q is not an Ethernet MAC address (write six hex bytes, such as 52:54:00:12:34:56)", ErrDomain, i, m.MAC)
		}
		if m.Uplink == "" {
			return dom.Name, nil, fmt.Errorf("%w: xdp-hostd interface %s: uplink= is required", ErrDomain, mac)
		}
		vc := daemon.VMConfig{Name: dom.Name, UUID: dom.UUID, MAC: mac.String()}
		if len(md.Interfaces) > 1 {
			vc.Name = fmt.Sprintf("%s-%d", dom.Name, i)
		}
		for _, q := range strings.Split(m.Queues, ",") {
			if q = strings.TrimSpace(q); q == "" {
				continue
			}
			n, err := strconv.Atoi(q)
			if err != nil {
				return dom.Name, nil, fmt.Errorf("%w: xdp-hostd interface %s: queues %q: not a list of queue numbers", ErrDomain, mac, m.Queues)
			}
			vc.Queues = append(vc.Queues, n)
		}
		iface := findInterface(ifaces, mac)
		targetDev := ""
		switch {
		case iface == nil:
			return dom.Name, nil, fmt.Errorf("%w: the metadata names %s, but the domain has no interface with that MAC", ErrDomain, mac)
		case iface.Source != nil && iface.Source.VHostUser != nil:
			vu := iface.Source.VHostUser
			if vu.Chardev == nil || vu.Chardev.UNIX == nil || vu.Chardev.UNIX.Path == "" {
				return dom.Name, nil, fmt.Errorf("%w: vhostuser interface %s has no unix socket path", ErrDomain, mac)
			}
			if vu.Chardev.UNIX.Mode == "server" {
				return dom.Name, nil, fmt.Errorf("%w: vhostuser interface %s: use mode='client' (xdp-hostd serves the socket; QEMU connects)", ErrDomain, mac)
			}
			vc.Delivery, vc.VhostUserSocket = "vhost-user", vu.Chardev.UNIX.Path
		case iface.Source != nil && iface.Source.Ethernet != nil || iface.Target != nil && iface.Target.Dev != "":
			dev, managed := "", true
			if iface.Target != nil {
				dev, managed = iface.Target.Dev, iface.Target.Managed != "no"
			}
			targetDev = dev
			if managed {
				// libvirt creates the tap after prepare (and names it
				// itself if the name is missing or one it reserves); the
				// started call attaches it.
				vc.TapMode = string(hostnet.TapExternal)
				if !autoTapName(dev) {
					vc.Tap = dev
				}
			} else {
				// managed='no': libvirt opens an existing tap by name,
				// with QEMU's flags; the daemon creates it so if missing.
				if dev == "" {
					return dom.Name, nil, fmt.Errorf("%w: ethernet interface %s: managed='no' needs the tap's name: <target dev='NAME' managed='no'/>", ErrDomain, mac)
				}
				vc.TapMode, vc.Tap = string(hostnet.TapQEMU), dev
				if iface.Driver != nil && iface.Driver.Queues > 1 {
					vc.TapQueues = int(iface.Driver.Queues)
				}
			}
		default:
			return dom.Name, nil, fmt.Errorf("%w: interface %s: xdp-hostd serves type='vhostuser' and type='ethernet' interfaces", ErrDomain, mac)
		}
		vms = append(vms, VM{Uplink: m.Uplink, Config: vc, TargetDev: targetDev})
	}
	if dom.Devices != nil {
		for _, ch := range dom.Devices.Channels {
			if ch.Target == nil || ch.Target.VirtIO == nil || ch.Target.VirtIO.Name != agentproto.PortName {
				continue
			}
			if ch.Source == nil || ch.Source.UNIX == nil || ch.Source.UNIX.Path == "" {
				return dom.Name, nil, fmt.Errorf("%w: channel %s: give it type='unix' with a source path (xdp-hostd serves the socket)", ErrDomain, agentproto.PortName)
			}
			if ch.Source.UNIX.Mode == "bind" {
				return dom.Name, nil, fmt.Errorf("%w: channel %s: use <source mode='connect'> (xdp-hostd serves the socket; QEMU connects)", ErrDomain, agentproto.PortName)
			}
			vms[0].Config.AgentSocket = ch.Source.UNIX.Path
		}
	}
	return dom.Name, vms, nil
}

// autoTapName reports whether libvirt names the tap itself: no name, or one
// with a prefix libvirt keeps for its own names (vnetN, vifN, macvtapN).
func autoTapName(dev string) bool {
	for _, p := range []string{"vnet", "vif", "macvtap", "macvlan"} {
		if strings.HasPrefix(dev, p) {
			return true
		}
	}
	return dev == ""
}

func findInterface(ifaces []libvirtxml.DomainInterface, mac net.HardwareAddr) *libvirtxml.DomainInterface {
	for i := range ifaces {
		if m := ifaces[i].MAC; m != nil {
			if hw, err := net.ParseMAC(m.Address); err == nil && hw.String() == mac.String() {
				return &ifaces[i]
			}
		}
	}
	return nil
}

// findMetadata finds xdp-hostd's element among the metadata's children.
func findMetadata(raw string, md *Metadata) error {
	dec := xml.NewDecoder(strings.NewReader(raw))
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Space == Namespace && se.Name.Local == "xdp-hostd" {
			return dec.DecodeElement(md, &se)
		}
	}
}

// owned reads what release needs of a domain XML, leniently (the domain's
// teardown must not depend on the rest of it): its name and UUID and the
// MACs its metadata marks.
func owned(r io.Reader) (name, uuid string, macs map[string]bool, err error) {
	b, err := io.ReadAll(io.LimitReader(r, 16<<20))
	if err != nil {
		return "", "", nil, fmt.Errorf("%w: read: %w", ErrDomain, err)
	}
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(string(b)); err != nil {
		return "", "", nil, fmt.Errorf("%w: %w", ErrDomain, err)
	}
	var md Metadata
	if dom.Metadata != nil {
		if err := findMetadata(dom.Metadata.XML, &md); err != nil {
			return dom.Name, dom.UUID, nil, fmt.Errorf("%w: xdp-hostd metadata: %w", ErrDomain, err)
		}
	}
	macs = map[string]bool{}
	for _, m := range md.Interfaces {
		if hw, err := net.ParseMAC(m.MAC); err == nil {
			macs[hw.String()] = true
		}
	}
	return dom.Name, dom.UUID, macs, nil
}

// API is what the hook needs of the daemon's client.
type API interface {
	// Caps is the hook's check that the daemon answers at all.
	Caps(ctx context.Context, vm string) (*guestprog.Capabilities, error)
	// AddVMs adds all the VMs or none: on error, or when ctx ends while
	// the daemon adds them, it removes those it added.
	AddVMs(ctx context.Context, vms []daemon.AddVMRequest) ([]daemon.VMStatus, error)
	VMs(ctx context.Context) ([]daemon.VMStatus, error)
	// RemoveOwnedVM removes a VM only if owner (domain UUID, MAC)
	// registered it.
	RemoveOwnedVM(ctx context.Context, name string, owner daemon.VMOwner) error
	// AttachTap gives an "external" tap VM the tap libvirt made.
	AttachTap(ctx context.Context, vm, tap string, owner *daemon.VMOwner) (*daemon.VMStatus, error)
}

// Time limits of a hook call. libvirt waits for the hook (and holds the
// domain's lock meanwhile), so a daemon that does not answer must cost
// little: every call first checks, within ProbeTimeout, that the daemon
// answers; a release or a prepare's rollback then has ReleaseTimeout.
// Variables so that tests can shorten them.
var (
	ProbeTimeout    = 2 * time.Second
	PrepareTimeout  = 20 * time.Second
	ReleaseTimeout  = 10 * time.Second
	RollbackTimeout = 10 * time.Second
)

// probe checks that the daemon answers within ProbeTimeout.
func probe(ctx context.Context, api API) error {
	pctx, cancel := context.WithTimeout(ctx, ProbeTimeout)
	defer cancel()
	if _, err := api.Caps(pctx, ""); err != nil {
		if errors.Is(err, context.DeadlineExceeded) || pctx.Err() != nil {
			return fmt.Errorf("xdp-hostd did not answer within %v (is it stopped or hung? check 'xdp-hostd status'): %w", ProbeTimeout, err)
		}
		return fmt.Errorf("xdp-hostd does not answer (is it running? check 'xdp-hostd status' and the hook's --socket): %w", err)
	}
	return nil
}

// Run handles one hook call: operation and sub-operation as libvirt passes
// them, the domain XML on stdin. Unrelated domains return at once, without
// contacting the daemon; otherwise the daemon must answer within
// ProbeTimeout.
//
//   - prepare registers the domain's VMs as one batch (all or none), each
//     with the domain's UUID; it fails the domain's start if that fails,
//     having removed what it added (within RollbackTimeout of its own when
//     no answer came back), and removes only VMs with the domain's UUID
//     and MAC.
//   - started (libvirt has created the domain's taps) attaches each
//     managed <interface type='ethernet'> tap; a failure fails the start.
//   - release removes the VMs the daemon has with the domain's UUID and
//     one of the MACs its metadata marks, whatever their names and
//     whatever the XML says of the taps; it never fails the teardown.
func Run(ctx context.Context, api API, op, subop string, domainXML io.Reader, logf func(string, ...any)) error {
	return RunWith(ctx, api, Options{}, op, subop, domainXML, logf)
}

func run(ctx context.Context, api API, opts Options, op, subop string, domainXML io.Reader, logf func(string, ...any)) error {
	switch op {
	case "prepare", "started":
	case "release":
		return release(ctx, api, domainXML, logf)
	default:
		return nil
	}
	name, vms, err := Parse(domainXML)
	if err != nil {
		return err
	}
	if len(vms) == 0 {
		return nil
	}
	if err := probe(ctx, api); err != nil {
		return fmt.Errorf("domain %s: %w", name, err)
	}
	if op == "started" {
		for _, vm := range vms {
			if vm.Config.TapMode != string(hostnet.TapExternal) {
				continue
			}
			if vm.TargetDev == "" {
				return fmt.Errorf("domain %s: interface %s: libvirt's XML names no tap (<target dev>) after start", name, vm.Config.MAC)
			}
			actx, cancel := context.WithTimeout(ctx, PrepareTimeout)
			_, err := api.AttachTap(actx, vm.Config.Name, vm.TargetDev, &daemon.VMOwner{UUID: vm.Config.UUID, MAC: vm.Config.MAC})
			cancel()
			if err != nil {
				return fmt.Errorf("domain %s: attach tap %s to VM %s: %w", name, vm.TargetDev, vm.Config.Name, err)
			}
			logf("xdp-hostd hook: domain %s: VM %s delivers to tap %s", name, vm.Config.Name, vm.TargetDev)
		}
		return nil
	}
	// VMs arriving by migration (registered by "migrate begin") are
	// there already, closed until the source's final step.
	lctx, lcancel := context.WithTimeout(ctx, PrepareTimeout)
	have, err := api.VMs(lctx)
	lcancel()
	if err != nil {
		return fmt.Errorf("domain %s: list the daemon's VMs: %w", name, err)
	}
	var reqs []daemon.AddVMRequest
	var added []VM
	for _, vm := range vms {
		if slices.ContainsFunc(have, func(vs daemon.VMStatus) bool { return vs.Incoming && sameVM(vs, vm.Config.UUID, vm.Config.MAC) }) {
			logf("xdp-hostd hook: domain %s: VM %s is arriving by migration (registered closed)", name, vm.Config.Name)
			continue
		}
		reqs = append(reqs, daemon.AddVMRequest{Uplink: opts.uplink(vm.Uplink), VM: vm.Config})
		added = append(added, vm)
	}
	if len(reqs) == 0 {
		return nil
	}
	vms = added
	actx, cancel := context.WithTimeout(ctx, PrepareTimeout)
	defer cancel()
	if _, err := api.AddVMs(actx, reqs); err != nil {
		// The daemon undoes a batch that fails or whose caller gives
		// up. Without its answer (the deadline ran out, the answer
		// was lost) the batch may have completed: remove it, with
		// time of its own since ctx may be what ran out, and only
		// what carries this domain's UUID and MAC.
		var answered *client.Error
		if !errors.As(err, &answered) {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), RollbackTimeout)
			defer cancel()
			for _, vm := range vms {
				api.RemoveOwnedVM(rctx, vm.Config.Name, daemon.VMOwner{UUID: vm.Config.UUID, MAC: vm.Config.MAC}) // not found if never added
			}
		}
		return fmt.Errorf("domain %s: register its %d xdp-hostd interfaces: %w", name, len(vms), err)
	}
	for i, vm := range vms {
		logf("xdp-hostd hook: domain %s: registered VM %s on %s", name, vm.Config.Name, reqs[i].Uplink)
	}
	return nil
}

// release removes what prepare registered for the domain: the VMs with
// its UUID and one of its metadata's MACs. It reports, never fails.
func release(ctx context.Context, api API, domainXML io.Reader, logf func(string, ...any)) error {
	name, uuid, macs, err := owned(domainXML)
	if err != nil {
		logf("xdp-hostd hook: %v (nothing removed)", err)
		return nil
	}
	if len(macs) == 0 {
		return nil
	}
	if uuid == "" {
		logf("xdp-hostd hook: domain %s has no UUID: nothing removed", name)
		return nil
	}
	if err := probe(ctx, api); err != nil {
		logf("xdp-hostd hook: domain %s: %v: its VMs stay registered (remove them with 'xdp-hostd vm rm')", name, err)
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, ReleaseTimeout)
	defer cancel()
	vms, err := api.VMs(rctx)
	if err != nil {
		logf("xdp-hostd hook: domain %s: list VMs: %v (nothing removed)", name, err)
		return nil
	}
	var errs []error
	n := 0
	for _, vm := range vms {
		hw, _ := net.ParseMAC(vm.MAC)
		if !strings.EqualFold(vm.UUID, uuid) || !macs[hw.String()] {
			continue
		}
		remove := func() error { return api.RemoveOwnedVM(rctx, vm.Name, daemon.VMOwner{UUID: uuid, MAC: vm.MAC}) }
		if mapi, ok := api.(MigrationAPI); ok && vm.Incoming {
			// A migration here failed: undo its import.
			remove = func() error { return mapi.AbortImport(rctx, vm.Name) }
		}
		if err := remove(); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
		logf("xdp-hostd hook: domain %s: removed VM %s", name, vm.Name)
	}
	if err := errors.Join(errs...); err != nil {
		// Release must not fail the domain's teardown: report only.
		logf("xdp-hostd hook: domain %s: %v", name, err)
	} else if n == 0 {
		logf("xdp-hostd hook: domain %s: no VM of this domain (UUID %s) registered", name, uuid)
	}
	return nil
}
