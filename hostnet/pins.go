package hostnet

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Pins: what keeps the dataplane running while no daemon does.
//
// Under PinDir/<uplink> (dots in the uplink's name become underscores:
// bpffs refuses them) the dataplane pins:
//
//	link              the uplink's XDP bpf_link (the dispatcher stays attached)
//	flood_link        the tc ingress link of the flood program
//	prog-<ID>/        the maps of the dispatcher whose kernel program ID is
//	                  <ID>: queue_slot, mac_slot, mac_cache, vm_progs (whose
//	                  pin keeps the VM programs in it: the kernel empties a
//	                  program array when no file or pin refers to it), and
//	                  dispatch_stats
//	tx-<IFINDEX>      the XDP link of the transmit program on a tap VM's tap
//	guest-<ID>[-p<N>]/ the maps of the VM program with kernel ID <ID> (and
//	                  daemon program ID N): its program arrays (a guest that
//	                  tail-calls keeps working) and its data maps, .data and
//	                  .bss, which a daemon restoring program N loads it with
//	                  (what the program stored survives a restart); with N,
//	                  present even when empty: it names the kernel program
//	                  a daemon that lost N's object keeps running
//
// A daemon that starts and finds a live link pin adopts it: it builds a
// complete new dispatcher (maps filled from its state), then swaps it in
// with one bpf_link update (Activate), so forwarding never stops. Each
// generation of maps has its own directory: the maps of the dispatcher
// attached at any instant are pinned at that instant, whatever point a
// daemon is killed at. After the swap, every pin this daemon did not make
// or claim is removed.

const (
	pinLink      = "link"
	pinFloodLink = "flood_link"
)

func pinName(uplink string) string { return strings.ReplaceAll(uplink, ".", "_") }

// preparePins takes the uplink's pin directory: it locks it against a second
// daemon and adopts a live link found there (d.adopted). Pins that cannot be
// adopted (their link is gone or attached elsewhere) are removed.
func (d *Dataplane) preparePins(dir string) error {
	if _, err := EnsureBPFFS(dir); err != nil {
		return err
	}
	// Temporary directories of the pinning scheme before this one.
	if old, _ := filepath.Glob(filepath.Join(dir, "tmp-"+pinName(d.cfg.Uplink)+"-*")); len(old) > 0 {
		for _, o := range old {
			os.RemoveAll(o)
		}
	}
	final := filepath.Join(dir, pinName(d.cfg.Uplink))
	if err := os.MkdirAll(final, 0o700); err != nil {
		return fmt.Errorf("create pin directory %s: %w", final, err)
	}
	lock, err := os.Open(final)
	if err != nil {
		return fmt.Errorf("open pin directory %s: %w", final, err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("%w: another xdp-hostd is using the pins of uplink %s at %s: stop it first, or give this one another pin_dir", ErrBusy, d.cfg.Uplink, final)
		}
		return fmt.Errorf("lock pin directory %s: %w", final, err)
	}
	d.pinLock, d.pinDir = lock, final
	d.claimed = map[string]bool{}

	l, err := link.LoadPinnedLink(filepath.Join(final, pinLink), nil)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			d.log.Warn("removing pins that cannot be adopted", "dir", final, "reason", err)
		}
		return d.clearPins()
	}
	info, err := l.Info()
	ifindex := 0
	if err == nil && info.XDP() != nil {
		ifindex = int(info.XDP().Ifindex)
	}
	if ifindex != d.index {
		l.Close()
		d.log.Warn("the pinned XDP link is no longer attached to the uplink: removing the old pins", "dir", final, "link_ifindex", ifindex, "uplink_ifindex", d.index)
		return d.clearPins()
	}
	d.link, d.adopted = l, true
	d.claimed[pinLink] = true
	if fl, err := link.LoadPinnedLink(filepath.Join(final, pinFloodLink), nil); err == nil {
		d.floodLink = fl
		d.claimed[pinFloodLink] = true
	}
	d.log.Info("adopting the running dataplane from its pins: it keeps forwarding until the rebuilt one is swapped in", "dir", final, "prog_id", info.Program)
	return nil
}

// clearPins removes everything under the pin directory (not the directory,
// which holds the lock). Removing a link's pin detaches it once no process
// holds it.
func (d *Dataplane) clearPins() error {
	ents, err := os.ReadDir(d.pinDir)
	if err != nil {
		return fmt.Errorf("read pin directory %s: %w", d.pinDir, err)
	}
	var errs []error
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(d.pinDir, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// pinNew pins what a freshly attached dataplane made (link, flood link and
// the dispatcher's maps).
func (d *Dataplane) pinNew() error {
	if err := d.link.Pin(filepath.Join(d.pinDir, pinLink)); err != nil {
		return fmt.Errorf("pin link in %s: %w", d.pinDir, err)
	}
	d.claim(pinLink, true)
	if d.floodLink != nil {
		if err := d.floodLink.Pin(filepath.Join(d.pinDir, pinFloodLink)); err != nil {
			return fmt.Errorf("pin flood link in %s: %w", d.pinDir, err)
		}
		d.claim(pinFloodLink, true)
	}
	return d.pinMaps()
}

// pinMaps pins the dispatcher's maps in the directory of its generation.
func (d *Dataplane) pinMaps() error {
	info, err := d.dispatch.Dispatch.Info()
	if err != nil {
		return fmt.Errorf("dispatcher info: %w", err)
	}
	id, _ := info.ID()
	gen := "prog-" + strconv.FormatUint(uint64(id), 10)
	dir := filepath.Join(d.pinDir, gen)
	os.RemoveAll(dir)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	d.claim(gen, true)
	for name, m := range map[string]*ebpf.Map{
		"queue_slot":     d.dispatch.QueueSlot,
		"mac_slot":       d.dispatch.MacSlot,
		"mac_cache":      d.dispatch.MacCache,
		"vm_progs":       d.dispatch.VmProgs,
		"dispatch_stats": d.dispatch.DispatchStats,
	} {
		if err := m.Pin(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("pin %s in %s: %w", name, dir, err)
		}
	}
	return nil
}

// Adopted reports whether Open found a running dataplane in its pins that
// Activate has yet to replace.
func (d *Dataplane) Adopted() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.adopted
}

// Activate finishes a start that adopted pinned objects: the caller has
// added its VMs and programs to the new dispatcher; Activate pins its maps,
// swaps it in for the running one with one link update, and removes every
// pin it did not claim (the old generation, links of VMs that are gone). It
// does nothing more on a dataplane that was attached fresh, except remove
// unclaimed pins.
func (d *Dataplane) Activate() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pinDir == "" {
		return nil
	}
	if d.adopted {
		if err := d.pinMaps(); err != nil {
			return err
		}
		if err := d.link.Update(d.dispatch.Dispatch); err != nil {
			return fmt.Errorf("swap the rebuilt dispatcher into uplink %s's link: %w", d.cfg.Uplink, err)
		}
		if d.floodLink != nil {
			if err := d.floodLink.Update(d.flood.Flood); err != nil {
				d.log.Warn("cannot update the pinned flood link: attaching anew", "err", err)
				d.floodLink.Unpin()
				d.floodLink.Close()
				d.floodLink = nil
			}
		}
		if d.floodLink == nil {
			if err := d.attachFloodLink(); err == nil && d.floodLink != nil {
				if err := d.floodLink.Pin(filepath.Join(d.pinDir, pinFloodLink)); err != nil {
					return fmt.Errorf("pin flood link: %w", err)
				}
				d.claim(pinFloodLink, true)
			}
		}
		d.adopted = false
		d.log.Info("rebuilt dataplane swapped in", "vms", len(d.vms))
	}
	return d.removeUnclaimed()
}

// removeUnclaimed removes the pins of the uplink's directory that this
// dataplane neither made nor adopted. The caller holds d.mu.
func (d *Dataplane) removeUnclaimed() error {
	ents, err := os.ReadDir(d.pinDir)
	if err != nil {
		return fmt.Errorf("read pin directory %s: %w", d.pinDir, err)
	}
	d.pinMu.Lock()
	defer d.pinMu.Unlock()
	var errs []error
	for _, e := range ents {
		if d.claimed[e.Name()] {
			continue
		}
		d.log.Info("removing a pin this daemon does not own", "pin", filepath.Join(d.pinDir, e.Name()))
		if err := os.RemoveAll(filepath.Join(d.pinDir, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// claim marks a pin name as this dataplane's; unclaim forgets it.
func (d *Dataplane) claim(name string, on bool) {
	d.pinMu.Lock()
	defer d.pinMu.Unlock()
	if d.claimed == nil {
		return
	}
	if on {
		d.claimed[name] = true
	} else {
		delete(d.claimed, name)
	}
}

// pinTxLink pins a tap's transmit link, or adopts the pinned one: when a
// live link for the tap is pinned, it is updated to prog and returned.
func (d *Dataplane) adoptTxLink(tapIndex int, prog *ebpf.Program) (link.Link, bool) {
	if d.pinDir == "" {
		return nil, false
	}
	name := "tx-" + strconv.Itoa(tapIndex)
	l, err := link.LoadPinnedLink(filepath.Join(d.pinDir, name), nil)
	if err != nil {
		return nil, false
	}
	info, err := l.Info()
	if err != nil || info.XDP() == nil || int(info.XDP().Ifindex) != tapIndex {
		l.Close()
		return nil, false
	}
	if err := l.Update(prog); err != nil {
		d.log.Warn("cannot update a tap's pinned transmit link: attaching anew", "ifindex", tapIndex, "err", err)
		l.Unpin()
		l.Close()
		return nil, false
	}
	d.claim(name, true)
	return l, true
}

func (d *Dataplane) pinTxLink(tapIndex int, l link.Link) error {
	if d.pinDir == "" {
		return nil
	}
	name := "tx-" + strconv.Itoa(tapIndex)
	os.Remove(filepath.Join(d.pinDir, name))
	if err := l.Pin(filepath.Join(d.pinDir, name)); err != nil {
		return fmt.Errorf("pin transmit link of tap %d: %w", tapIndex, err)
	}
	d.claim(name, true)
	return nil
}

// unpinTxLink removes a tap's transmit link pin (the link detaches when
// the caller closes it).
func (d *Dataplane) unpinTxLink(tapIndex int, l link.Link) {
	if d.pinDir == "" || l == nil {
		return
	}
	l.Unpin()
	d.claim("tx-"+strconv.Itoa(tapIndex), false)
}

// guestPinName is the pin directory of a VM program: by its kernel ID, and
// with the daemon's program ID (key) when it has one, which is how a later
// daemon finds the maps of the program it restores.
func guestPinName(kernelID ebpf.ProgramID, key uint64) string {
	name := "guest-" + strconv.FormatUint(uint64(kernelID), 10)
	if key != 0 {
		name += "-p" + strconv.FormatUint(key, 10)
	}
	return name
}

// pinGuestMaps pins a VM program's program arrays (a guest that tail-calls
// keeps working while no daemon runs) and its state maps (a daemon that
// restores the program gets them back). A program the daemon knows by ID
// (key) gets its directory even with no map to pin: it says which daemon
// program the kernel program is, so that a later daemon that lost the
// object can keep it running (AdoptPinnedProgram). It returns the
// directory's name, "" when nothing was pinned.
func (d *Dataplane) pinGuestMaps(kernelID ebpf.ProgramID, key uint64, maps map[string]*ebpf.Map) (string, error) {
	if d.pinDir == "" || (len(maps) == 0 && key == 0) {
		return "", nil
	}
	name := guestPinName(kernelID, key)
	dir := filepath.Join(d.pinDir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	for n, m := range maps {
		if err := m.Pin(filepath.Join(dir, mapPinName(n))); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("pin map %s in %s: %w", n, dir, err)
		}
	}
	d.claim(name, true)
	return name, nil
}

// mapPinName is the pin name of a guest map: bpffs refuses dots, which the
// maps of data sections (".bss", ".data.x") have, so they become '-', which
// no C identifier (the name of any other map) has.
func mapPinName(name string) string { return strings.ReplaceAll(name, ".", "-") }

func mapNameOfPin(pin string) string { return strings.ReplaceAll(pin, "-", ".") }

// unpinGuest removes a VM program's pin directory (name from pinGuestMaps).
func (d *Dataplane) unpinGuest(name string) {
	if d.pinDir == "" || name == "" {
		return
	}
	d.pinMu.Lock()
	defer d.pinMu.Unlock()
	if d.claimed[name] {
		os.RemoveAll(filepath.Join(d.pinDir, name))
		delete(d.claimed, name)
	}
}

// pinnedStateMaps opens the maps a previous daemon pinned for the program
// with the daemon's ID key (nil when there are none). The caller closes
// them.
func (d *Dataplane) pinnedStateMaps(key uint64) map[string]*ebpf.Map {
	if d.pinDir == "" || key == 0 {
		return nil
	}
	suffix := "-p" + strconv.FormatUint(key, 10)
	ents, err := os.ReadDir(d.pinDir)
	if err != nil {
		return nil
	}
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "guest-") || !strings.HasSuffix(e.Name(), suffix) {
			continue
		}
		dir := filepath.Join(d.pinDir, e.Name())
		files, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		out := map[string]*ebpf.Map{}
		for _, f := range files {
			m, err := ebpf.LoadPinnedMap(filepath.Join(dir, f.Name()), nil)
			if err != nil {
				d.log.Warn("a pinned map of a restored program cannot be opened; the program gets a fresh one", "pin", filepath.Join(dir, f.Name()), "err", err)
				continue
			}
			out[mapNameOfPin(f.Name())] = m
		}
		return out
	}
	return nil
}
