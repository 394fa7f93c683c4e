package hostnet

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sort"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	hostbpf "github.com/xdp-hostd/xdp-hostd/bpf"
)

// Limits of the dataplane, fixed by the BPF maps in bpf/hostd.h.
const (
	MaxVMs    = 256
	MaxQueues = 256
	MaxPorts  = 64 // XDP_HOSTD_MAX_PORTS in bpf/include/xdp_hostd.h
	// UplinkPort is the port number of the uplink in every VM's port table.
	UplinkPort = 0
)

// AttachMode says how the root program is attached to the uplink.
type AttachMode int

const (
	// AttachAuto tries native (driver) mode and falls back to generic mode,
	// logging why.
	AttachAuto AttachMode = iota
	// AttachNative requires native mode.
	AttachNative
	// AttachGeneric uses generic (skb) mode.
	AttachGeneric
)

func (m AttachMode) String() string {
	switch m {
	case AttachAuto:
		return "auto"
	case AttachNative:
		return "native"
	case AttachGeneric:
		return "generic"
	}
	return fmt.Sprintf("AttachMode(%d)", int(m))
}

// ParseAttachMode reads "auto", "native" or "generic".
func ParseAttachMode(s string) (AttachMode, error) {
	for _, m := range []AttachMode{AttachAuto, AttachNative, AttachGeneric} {
		if m.String() == s {
			return m, nil
		}
	}
	return 0, fmt.Errorf("XDP mode %q: want auto, native or generic", s)
}

// Config describes the dataplane of one uplink. The zero value of each field
// is its default.
type Config struct {
	// Uplink is the name of the network interface the VMs' traffic arrives
	// on. Required.
	Uplink string
	// NetNS is the path of the network namespace the uplink lives in (for
	// example /run/netns/NAME); empty means the caller's namespace.
	NetNS string
	// Mode is how the root program is attached; default AttachAuto.
	Mode AttachMode
	// Force allows taking over an uplink that already has an XDP program
	// attached through netlink. A program held by another bpf_link is
	// never replaced.
	Force bool
	// PinDir, if set, is a directory on a BPF filesystem under which the
	// dataplane pins its link and maps (in a subdirectory named after the
	// uplink), so that other tools can inspect them. Pins are removed by
	// Close. If the BPF filesystem is not mounted there, it is mounted.
	PinDir string
	// Log receives operational and audit events; default slog.Default().
	Log *slog.Logger
}

// Dataplane is the XDP fast path of one uplink: the root program, the VMs
// behind it and their port tables. Its methods are safe for concurrent use.
type Dataplane struct {
	cfg    Config
	log    *slog.Logger
	ns     *NSRunner
	nl     *netlink.Handle
	uplink netlink.Link
	index  int
	queues int
	inv    *Uplink
	mode   AttachMode // the mode actually in use

	dispatch  hostbpf.DispatchObjects
	vmtx      hostbpf.VmtxObjects
	flood     hostbpf.FloodObjects
	floodLink link.Link // nil when tcx is not available
	link      link.Link
	pinDir    string   // the uplink's pin directory, "" if none
	pinLock   *os.File // flock on pinDir: one daemon per uplink's pins
	adopted   bool     // running on pinned objects until Activate
	pinMu     sync.Mutex
	claimed   map[string]bool // pins of pinDir that are this dataplane's

	steering error // nil when ntuple steering works on the uplink

	mu    sync.Mutex
	vms   map[string]*VM
	slots [MaxVMs]*VM
}

// Open takes over the uplink: it loads the root program and attaches it. On
// error nothing is left attached, pinned or loaded.
func Open(cfg Config) (_ *Dataplane, err error) {
	if cfg.Uplink == "" {
		return nil, errors.New("no uplink given: name the network interface VMs' traffic arrives on")
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: attaching XDP programs needs root (CAP_NET_ADMIN and CAP_BPF): run xdp-hostd as root", ErrNotRoot)
	}
	d := &Dataplane{cfg: cfg, log: cfg.Log, vms: map[string]*VM{}}
	if d.log == nil {
		d.log = slog.Default()
	}
	d.log = d.log.With("uplink", cfg.Uplink)
	defer func() {
		if err != nil {
			d.closeAll()
		}
	}()

	if d.ns, err = NewNSRunner(cfg.NetNS); err != nil {
		return nil, err
	}
	if d.nl, err = netlink.NewHandleAt(d.ns.Handle()); err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", nsName(cfg.NetNS), err)
	}
	if d.uplink, err = d.nl.LinkByName(cfg.Uplink); err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, fmt.Errorf("uplink %q: %w in %s (list them with 'ip link')", cfg.Uplink, ErrNoSuchInterface, nsName(cfg.NetNS))
		}
		return nil, fmt.Errorf("look up uplink %q: %w", cfg.Uplink, err)
	}
	attrs := d.uplink.Attrs()
	d.index, d.queues = attrs.Index, attrs.NumRxQueues
	if d.inv, err = Inspect(d.ns, cfg.Uplink); err != nil {
		return nil, err
	}
	mode := cfg.Mode
	if f := d.inv.XDP; f.Source == "netdev-netlink" && !f.Basic {
		switch mode {
		case AttachNative:
			return nil, fmt.Errorf("%w: uplink %s: its driver has no native XDP support (XDP features: %s); set the uplink's \"xdp_mode\" to \"generic\" in the configuration, or to \"auto\" to fall back by itself", ErrNotSupported, cfg.Uplink, f)
		case AttachAuto:
			d.log.Warn("the uplink's driver has no native XDP support: using generic (skb) mode, which is slower", "xdp_features", f.String())
			mode = AttachGeneric
		}
	}
	if d.queues > MaxQueues {
		d.log.Warn("uplink has more RX queues than xdp-hostd can dedicate; only the first ones can be given to VMs", "rx_queues", d.queues, "max", MaxQueues)
	}
	if err := hostbpf.LoadDispatchObjects(&d.dispatch, nil); err != nil {
		return nil, fmt.Errorf("load dispatch program: %w", err)
	}
	if err := hostbpf.LoadVmtxObjects(&d.vmtx, nil); err != nil {
		return nil, fmt.Errorf("load VM transmit program: %w", err)
	}
	if err := hostbpf.LoadFloodObjects(&d.flood, nil); err != nil {
		return nil, fmt.Errorf("load flood program: %w", err)
	}
	if cfg.PinDir != "" {
		if err := d.preparePins(cfg.PinDir); err != nil {
			return nil, err
		}
	}
	if d.adopted {
		// The pinned dispatcher keeps running until Activate swaps the
		// rebuilt one in; its mode stays what it was.
		if attrs.Xdp != nil && attrs.Xdp.AttachMode == xdpAttachedSKB {
			d.mode = AttachGeneric
		} else {
			d.mode = AttachNative
		}
	} else {
		if err := d.checkExisting(attrs); err != nil {
			return nil, err
		}
		if d.link, d.mode, err = d.attach(d.dispatch.Dispatch, d.index, cfg.Uplink, mode); err != nil {
			return nil, err
		}
		if err := d.attachFloodLink(); err != nil {
			return nil, err
		}
		if d.pinDir != "" {
			if err := d.pinNew(); err != nil {
				return nil, err
			}
		}
	}
	d.log.Info("dataplane attached", "ifindex", d.index, "rx_queues", d.queues, "xdp_mode", d.mode.String(), "xdp_features", d.inv.XDP.String(), "pins", d.pinDir)
	return d, nil
}

func nsName(path string) string {
	if path == "" {
		return "this network namespace"
	}
	return "network namespace " + path
}

// checkExisting refuses to take over an uplink that already runs an XDP
// program, unless told to; it never replaces a program held by a bpf_link.
func (d *Dataplane) checkExisting(attrs *netlink.LinkAttrs) error {
	if attrs.Xdp == nil || !attrs.Xdp.Attached {
		return nil
	}
	id := attrs.Xdp.ProgId
	if !d.cfg.Force {
		return fmt.Errorf("%w: uplink %s already runs XDP program id %d; xdp-hostd does not replace it blindly: remove it (ip link set dev %s xdp off) or set the uplink's \"force\": true in the configuration", ErrBusy, d.cfg.Uplink, id, d.cfg.Uplink)
	}
	if linkID, err := XDPLinkHolding(attrs.Index, id); err == nil && linkID != 0 {
		return fmt.Errorf("%w: uplink %s runs XDP program id %d through bpf_link id %d, which its owner holds; even \"force\" cannot replace it: stop its owner (bpftool link show id %d)", ErrBusy, d.cfg.Uplink, id, linkID, linkID)
	}
	d.log.Warn("replacing the uplink's XDP program as told (\"force\": true)", "prog_id", id)
	return d.ns.Do(func() error {
		for _, flags := range []int{0, xdpFlagsSKB, xdpFlagsDrv} {
			_ = netlink.LinkSetXdpFdWithFlags(d.uplink, -1, flags)
		}
		return nil
	})
}

const (
	xdpAttachedSKB = 2 // XDP_ATTACHED_SKB (IFLA_XDP_ATTACHED)

	xdpFlagsSKB = 1 << 1 // XDP_FLAGS_SKB_MODE
	xdpFlagsDrv = 1 << 2 // XDP_FLAGS_DRV_MODE
)

// attach attaches prog to ifindex with a bpf_link in the requested mode.
func (d *Dataplane) attach(prog *ebpf.Program, ifindex int, ifname string, mode AttachMode) (l link.Link, used AttachMode, err error) {
	try := func(flags link.XDPAttachFlags) error {
		return d.ns.Do(func() error {
			var err error
			l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: flags})
			return err
		})
	}
	switch mode {
	case AttachGeneric:
		if err := try(link.XDPGenericMode); err != nil {
			return nil, 0, fmt.Errorf("attach %s to %s in generic mode: %w", prog, ifname, err)
		}
		return l, AttachGeneric, nil
	case AttachNative:
		if err := try(link.XDPDriverMode); err != nil {
			return nil, 0, fmt.Errorf("%w: attach to %s in native mode: %w (the driver may lack XDP support; set the uplink's \"xdp_mode\" to \"generic\" or \"auto\" in the configuration)", ErrNotSupported, ifname, err)
		}
		return l, AttachNative, nil
	default:
		nerr := try(link.XDPDriverMode)
		if nerr == nil {
			return l, AttachNative, nil
		}
		d.log.Warn("native XDP attach failed, falling back to generic (skb) mode, which is slower", "ifname", ifname, "reason", nerr)
		if err := try(link.XDPGenericMode); err != nil {
			return nil, 0, fmt.Errorf("%w: attach to %s: native mode: %v; generic mode: %w", ErrNotSupported, ifname, nerr, err)
		}
		return l, AttachGeneric, nil
	}
}

// unpin removes the uplink's pins; with them go the links (once closed).
func (d *Dataplane) unpin() error {
	if d.pinDir == "" || d.adopted {
		return nil
	}
	err := d.clearPins()
	if rerr := os.Remove(d.pinDir); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	d.pinDir = ""
	return err
}

// Uplink returns the uplink's name, ifindex and number of RX queues.
func (d *Dataplane) Uplink() (name string, ifindex, rxQueues int) {
	return d.cfg.Uplink, d.index, d.queues
}

// Inventory is what the dataplane found out about the uplink when it took
// it over: queues and XDP features.
func (d *Dataplane) Inventory() Uplink { return *d.inv }

// Mode is the XDP mode the root program runs in.
func (d *Dataplane) Mode() AttachMode { return d.mode }

// NS runs functions in the uplink's network namespace.
func (d *Dataplane) NS() *NSRunner { return d.ns }

// Steering says whether hardware flow steering by destination MAC is
// available on the uplink: nil, or why not.
func (d *Dataplane) Steering() error { return d.steering }

// VMs returns the VMs, sorted by name.
func (d *Dataplane) VMs() []*VM {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]*VM, 0, len(d.vms))
	for _, vm := range d.vms {
		out = append(out, vm)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// VM returns the VM with the given name, or nil.
func (d *Dataplane) VM(name string) *VM {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.vms[name]
}

// DispatchStats are the root program's counters. A VM's own packets are
// counted per verdict by its epilogue (VM.Verdicts).
type DispatchStats struct {
	Host      Count `json:"host"`       // not a VM's packet: passed to the host stack
	NoProgram Count `json:"no_program"` // a VM's packet while its slot had no program: dropped
}

// Count is a number of packets and their bytes.
type Count struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

func (c *Count) add(o Count) { c.Packets += o.Packets; c.Bytes += o.Bytes }

// readCount sums a per-CPU hostd_count entry.
func readCount(m *ebpf.Map, key uint32) (Count, error) {
	var per []Count
	if err := m.Lookup(key, &per); err != nil {
		return Count{}, fmt.Errorf("read %s[%d]: %w", m, key, err)
	}
	var c Count
	for _, p := range per {
		c.add(p)
	}
	return c, nil
}

// Stats reads the root program's counters.
func (d *Dataplane) Stats() (DispatchStats, error) {
	var s DispatchStats
	for i, dst := range []*Count{&s.Host, &s.NoProgram} {
		c, err := readCount(d.dispatch.DispatchStats, uint32(i))
		if err != nil {
			return s, err
		}
		*dst = c
	}
	return s, nil
}

// Close removes every VM and detaches the root program. It always does all
// of it and reports what failed.
//
// A dataplane that adopted pinned objects and was not activated yet (its
// start failed) leaves the pinned one running, as Release does.
func (d *Dataplane) Close() error {
	if d.adopted {
		d.log.Warn("start failed while adopting the pinned dataplane: leaving it running")
		return d.Release()
	}
	d.mu.Lock()
	var errs []error
	for _, vm := range d.vms {
		if vm.tap != nil && vm.tap.Persistent() {
			// QEMU's tap (TapQEMU) outlives the daemon: QEMU still uses
			// it, and the next daemon takes it again.
			vm.tap.Keep()
		}
		errs = append(errs, d.removeLocked(vm))
	}
	d.mu.Unlock()
	errs = append(errs, d.closeAll())
	d.log.Info("dataplane detached")
	return errors.Join(errs...)
}

// Release lets go of the dataplane and leaves it running on its pins: the
// dispatcher, the VM programs and the taps' transmit programs keep
// forwarding with no process holding them, until a daemon adopts them
// (Open with the same PinDir) or removes the pins ('xdp-hostd down'). Taps
// this process created go with it (a tap lives while its queues are open;
// QEMU's and libvirt's taps are adopted, not created). Without pins it is
// Close.
func (d *Dataplane) Release() error {
	if d.pinDir == "" {
		return d.Close()
	}
	d.mu.Lock()
	var errs []error
	for _, vm := range d.vms {
		// A persistent tap (QEMU's, TapQEMU) stays: QEMU keeps using it
		// and the next daemon adopts it.
		if vm.tap != nil && !vm.tap.Persistent() {
			errs = append(errs, vm.tap.Close())
		}
		if vm.tapLink != nil {
			errs = append(errs, vm.tapLink.Close())
		}
		if vm.prog != nil {
			errs = append(errs, vm.prog.Close())
		}
		if vm.maps != nil {
			errs = append(errs, vm.maps.Close())
		}
	}
	d.vms = map[string]*VM{}
	d.slots = [MaxVMs]*VM{}
	d.mu.Unlock()
	d.pinDir = "" // keep the pins
	errs = append(errs, d.closeAll())
	d.log.Info("dataplane released: it keeps forwarding on its pins")
	return errors.Join(errs...)
}

func (d *Dataplane) closeAll() error {
	var errs []error
	errs = append(errs, d.unpin())
	if d.pinLock != nil {
		d.pinLock.Close()
		d.pinLock = nil
	}
	if d.link != nil {
		errs = append(errs, d.link.Close())
		d.link = nil
	}
	if d.floodLink != nil {
		errs = append(errs, d.floodLink.Close())
		d.floodLink = nil
	}
	errs = append(errs, d.dispatch.Close(), d.vmtx.Close(), d.flood.Close())
	if d.nl != nil {
		d.nl.Close()
		d.nl = nil
	}
	errs = append(errs, d.ns.Close())
	return errors.Join(errs...)
}

// macKey is struct hostd_mac.
type macKey struct {
	Addr [6]byte
	Pad  uint16
}

func toMACKey(mac net.HardwareAddr) macKey {
	var k macKey
	copy(k.Addr[:], mac)
	return k
}

// DispatchProgram is the root program (for benchmarks and tests that run
// it with BPF_PROG_RUN).
func (d *Dataplane) DispatchProgram() *ebpf.Program { return d.dispatch.Dispatch }

// macCacheBits is MAC_CACHE_BITS of bpf/dispatch.c.
const macCacheBits = 12

// macIndex is mac_index of bpf/dispatch.c: where a MAC sits in mac_cache.
func macIndex(a net.HardwareAddr) uint32 {
	lo := uint32(a[2])<<24 | uint32(a[3])<<16 | uint32(a[4])<<8 | uint32(a[5])
	hi := uint32(a[0])<<8 | uint32(a[1])
	return ((lo ^ hi) * 0x9E3779B1) >> (32 - macCacheBits)
}

// cacheMAC puts a VM's MAC into the direct-mapped cache if its entry is
// free; a MAC whose entry is taken is found through mac_slot.
func (d *Dataplane) cacheMAC(mac net.HardwareAddr, slot int) error {
	idx := macIndex(mac)
	var e hostbpf.DispatchMacCacheEntry
	if err := d.dispatch.MacCache.Lookup(idx, &e); err != nil {
		return fmt.Errorf("read MAC cache entry %d: %w", idx, err)
	}
	if e.Slot1 != 0 {
		return nil
	}
	copy(e.Addr[:], mac)
	e.Slot1 = uint16(slot + 1)
	if err := d.dispatch.MacCache.Put(idx, e); err != nil {
		return fmt.Errorf("cache MAC %s: %w", mac, err)
	}
	return nil
}

// uncacheMAC removes a MAC from the cache, and gives its entry to another
// VM whose MAC maps there, if any. The caller holds d.mu.
func (d *Dataplane) uncacheMAC(mac net.HardwareAddr) error {
	idx := macIndex(mac)
	var e hostbpf.DispatchMacCacheEntry
	if err := d.dispatch.MacCache.Lookup(idx, &e); err != nil {
		return fmt.Errorf("read MAC cache entry %d: %w", idx, err)
	}
	if !slices.Equal(e.Addr[:], mac) {
		return nil
	}
	if err := d.dispatch.MacCache.Put(idx, hostbpf.DispatchMacCacheEntry{}); err != nil {
		return fmt.Errorf("uncache MAC %s: %w", mac, err)
	}
	for _, other := range d.slots {
		if other != nil && !slices.Equal(other.mac, mac) && macIndex(other.mac) == idx {
			return d.cacheMAC(other.mac, other.slot)
		}
	}
	return nil
}

// attachFloodLink attaches the flood program (bpf/flood.c) to the uplink's
// tc ingress: broadcast and multicast frames on shared queues reach every
// tap VM. Without tcx (Linux < 6.6) it logs that and goes on.
func (d *Dataplane) attachFloodLink() error {
	err := d.ns.Do(func() (err error) {
		d.floodLink, err = link.AttachTCX(link.TCXOptions{Interface: d.index, Program: d.flood.Flood, Attach: ebpf.AttachTCXIngress})
		return err
	})
	if err != nil {
		d.log.Warn("cannot attach the flood program (tcx needs Linux 6.6): broadcasts on shared queues reach the host only, not the VMs", "err", err)
		d.floodLink = nil
	}
	return nil
}

// refreshFlood writes the tap VMs' taps into flood_ports. The caller holds d.mu.
func (d *Dataplane) refreshFlood() error {
	var idx []uint32
	for _, vm := range d.slots {
		if vm != nil && vm.tap != nil && len(idx) < floodMax {
			idx = append(idx, uint32(vm.tap.Index()))
		}
	}
	for i := 0; i < floodMax; i++ {
		v := uint32(0)
		if i < len(idx) {
			v = idx[i]
		}
		if err := d.flood.FloodPorts.Put(uint32(i), v); err != nil {
			return fmt.Errorf("flood list: %w", err)
		}
	}
	return nil
}

// floodMax is HOSTD_MAX_FLOOD of bpf/flood.c.
const floodMax = 64

// FloodStats counts the broadcast and multicast copies made for tap VMs.
func (d *Dataplane) FloodStats() (Count, error) { return readCount(d.flood.FloodStats, 0) }
