package hostnet_test

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
)

func pinEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

func hasPrefix(names []string, p string) (n int, first string) {
	for _, s := range names {
		if strings.HasPrefix(s, p) {
			if n == 0 {
				first = s
			}
			n++
		}
	}
	return n, first
}

// A released dataplane keeps forwarding on its pins (a guest's tail-call
// array included); the next Open adopts it, keeps it running while it
// rebuilds, swaps the rebuilt one in with Activate and removes the old
// generation's pins; Close removes everything.
func TestReleaseAndAdopt(t *testing.T) {
	topo := testnet.Topology(t, 4)
	qemuTap, err := hostnet.CreateTap(hostnet.TapOptions{Name: "qemu0", NetNS: topo.HostNS})
	if err != nil {
		t.Fatal(err)
	}
	defer qemuTap.Close()
	reader := testnet.TapCounter(t, qemuTap)
	pins := t.TempDir()
	t.Cleanup(func() { unix.Unmount(pins, unix.MNT_DETACH) })
	dir := filepath.Join(pins, topo.Uplink)
	open := func() *hostnet.Dataplane {
		t.Helper()
		dp, err := hostnet.Open(hostnet.Config{Uplink: topo.Uplink, NetNS: topo.HostNS, PinDir: pins})
		if err != nil {
			t.Fatal(err)
		}
		return dp
	}
	sender := testnet.Sender(t, topo)
	var want uint64
	deliver := func(what string, tag uint16) {
		t.Helper()
		send(t, sender, frameTo(topo, mac1, tag, 7000), 1, 100)
		want += 100
		if got := settle(t, reader, want).ByTag[tag]; got != 100 {
			t.Fatalf("%s: the VM got %d of 100 frames", what, got)
		}
	}

	dp1 := open()
	vm, err := dp1.AddVM(hostnet.VMSpec{Name: "vm1", MAC: mac1, Queues: []int{1}, Tap: "qemu0"})
	if err != nil {
		dp1.Close()
		t.Fatal(err)
	}
	// vm2's guest tail-calls through an array of its own (its tap is the
	// dataplane's and goes when it is released: only the pins are checked).
	vmT, err := dp1.AddVM(hostnet.VMSpec{Name: "vm2", MAC: mac2, Queues: []int{2}})
	if err != nil {
		dp1.Close()
		t.Fatal(err)
	}
	setGuest(t, vmT, "tailcall")
	names := pinEntries(t, dir)
	n, guest := hasPrefix(names, "guest-")
	if n != 1 {
		dp1.Close()
		t.Fatalf("pins %v: want one guest-<id> directory for the tail-call array", names)
	}
	setGuest(t, vmT, "pass")
	if n, _ := hasPrefix(pinEntries(t, dir), "guest-"); n != 0 {
		t.Errorf("the replaced program's array is still pinned: %v", pinEntries(t, dir))
	}
	setGuest(t, vmT, "tailcall")
	_, guest = hasPrefix(pinEntries(t, dir), "guest-")
	setGuest(t, vm, "pass")
	deliver("before release", 1)

	if err := dp1.Release(); err != nil {
		t.Fatal(err)
	}
	deliver("released", 2)
	arr, err := ebpf.LoadPinnedMap(filepath.Join(dir, guest, "stages"), nil)
	if err != nil {
		t.Fatalf("tail-call array pin: %v", err)
	}
	var id uint32
	err = arr.Lookup(uint32(0), &id)
	arr.Close()
	if err != nil || id == 0 {
		t.Errorf("the guest's tail-call array lost its program with no daemon running (id %d, %v)", id, err)
	}
	before := pinEntries(t, dir)

	dp2 := open()
	closed := false
	defer func() {
		if !closed {
			dp2.Close()
		}
	}()
	if !dp2.Adopted() {
		t.Fatal("Open did not adopt the pinned dataplane")
	}
	if _, err := hostnet.Open(hostnet.Config{Uplink: topo.Uplink, NetNS: topo.HostNS, PinDir: pins}); !errors.Is(err, hostnet.ErrBusy) {
		t.Errorf("a second Open on the same pins: %v, want ErrBusy", err)
	}
	vm2, err := dp2.AddVM(hostnet.VMSpec{Name: "vm1", MAC: mac1, Queues: []int{1}, Tap: "qemu0"})
	if err != nil {
		t.Fatal(err)
	}
	deliver("adopted, before activation", 3)
	setGuest(t, vm2, "pass")
	if err := dp2.Activate(); err != nil {
		t.Fatal(err)
	}
	deliver("activated", 4)
	after := pinEntries(t, dir)
	if n, _ := hasPrefix(after, "prog-"); n != 1 {
		t.Errorf("pins after activation %v: want one prog-<id> generation", after)
	}
	if n, _ := hasPrefix(after, "guest-"); n != 0 {
		t.Errorf("pins after activation %v: the old program's array is still pinned", after)
	}
	if n, _ := hasPrefix(after, "tx-"); n != 1 || !contains(after, "link") || !contains(after, "flood_link") {
		t.Errorf("pins after activation %v: want link, flood_link and one tx-<ifindex>", after)
	}
	for _, b := range before {
		if strings.HasPrefix(b, "prog-") && contains(after, b) {
			t.Errorf("the old generation %s is still pinned", b)
		}
	}

	closed = true
	if err := dp2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory left after Close: %v", pinEntries(t, dir))
	}
	err = testnet.Runner(t, topo.HostNS).Do(func() error {
		for _, name := range []string{topo.Uplink, "qemu0"} {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if l.Attrs().Xdp != nil && l.Attrs().Xdp.Attached {
				t.Errorf("%s still has an XDP program after Close", name)
			}
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
