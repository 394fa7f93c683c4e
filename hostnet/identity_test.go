package hostnet_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
)

// linkMAC is an interface's MAC in the topology's host namespace.
func linkMAC(t *testing.T, topo *hostnet.Topology, name string) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	err := testnet.Runner(t, topo.HostNS).Do(func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		mac = l.Attrs().HardwareAddr
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return mac
}

// A VM may not take a MAC of the host: the uplink's, its veth peer's (the
// wire side here), a tap's; nor a broadcast or multicast one. Nothing of a
// refused VM is left.
func TestHostMACsRefused(t *testing.T) {
	topo := testnet.Topology(t, 4)
	dp := openDP(t, topo)
	vm1 := addVM(t, dp, "vm1", mac1, 1)
	tapMAC := linkMAC(t, topo, vm1.Tap().Name())
	for _, tc := range []struct {
		mac  net.HardwareAddr
		says string
	}{
		{topo.UplinkMAC, "(the uplink)"},
		{topo.WireMAC, "the uplink's peer"},
		{tapMAC, "interface " + vm1.Tap().Name()},
		{net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, "multicast"},
		{net.HardwareAddr{0x01, 0x00, 0x5e, 0x00, 0x00, 0x01}, "multicast"},
		{net.HardwareAddr{0, 0, 0, 0, 0, 0}, "not a usable address"},
	} {
		_, err := dp.AddVM(hostnet.VMSpec{Name: "evil", MAC: tc.mac, Queues: []int{2}})
		if err == nil || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("MAC %s: %v, want an error saying %q", tc.mac, err, tc.says)
		}
		if len(dp.VMs()) != 1 {
			t.Fatalf("MAC %s: a refused VM was left", tc.mac)
		}
	}
	// The taps the refused VMs would have had are not left either.
	if got := len(leftLinks(t, topo, "xh")); got != 1 {
		t.Errorf("%d xh* taps, want vm1's only", got)
	}
}

// leftLinks lists the host namespace's interfaces whose name has prefix.
func leftLinks(t *testing.T, topo *hostnet.Topology, prefix string) []string {
	t.Helper()
	var out []string
	testnet.Runner(t, topo.HostNS).Do(func() error {
		links, err := netlink.LinkList()
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, prefix) {
				out = append(out, l.Attrs().Name)
			}
		}
		return err
	})
	return out
}

// One tap, one VM: a second VM on the first one's tap is refused naming
// the first, and the first keeps its tap's transmit program and pin.
func TestOneTapOneVM(t *testing.T) {
	topo := testnet.Topology(t, 4)
	pins := t.TempDir()
	t.Cleanup(func() { unix.Unmount(pins, unix.MNT_DETACH) })
	dp, err := hostnet.Open(hostnet.Config{Uplink: topo.Uplink, NetNS: topo.HostNS, PinDir: pins})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	tapName := topo.Prefix + "t1"
	vm1, err := dp.AddVM(hostnet.VMSpec{Name: "vm1", MAC: mac1, Queues: []int{1}, Tap: tapName})
	if err != nil {
		t.Fatal(err)
	}
	pin := filepath.Join(pins, topo.Uplink, fmt.Sprintf("tx-%d", vm1.Tap().Index()))
	if _, err := os.Stat(pin); err != nil {
		t.Fatalf("vm1's transmit pin: %v", err)
	}
	_, err = dp.AddVM(hostnet.VMSpec{Name: "vm2", MAC: mac2, Queues: []int{2}, Tap: tapName})
	if !errors.Is(err, hostnet.ErrExists) || !strings.Contains(err.Error(), "tap "+tapName+" is VM vm1's") {
		t.Fatalf("second VM on vm1's tap: %v", err)
	}
	// Whatever a second VM did to the tap would show after it went: it
	// never came, and removing what might be left of it changes nothing.
	dp.RemoveVM("vm2")
	if _, err := os.Stat(pin); err != nil {
		t.Errorf("vm1's transmit pin is gone: %v", err)
	}
	err = testnet.Runner(t, topo.HostNS).Do(func() error {
		l, err := netlink.LinkByName(tapName)
		if err != nil {
			return err
		}
		if l.Attrs().Xdp == nil || !l.Attrs().Xdp.Attached {
			t.Error("vm1's tap lost its transmit program")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Once vm1 is gone, its tap name is free again.
	if err := dp.RemoveVM("vm1"); err != nil {
		t.Fatal(err)
	}
	if _, err := dp.AddVM(hostnet.VMSpec{Name: "vm2", MAC: mac2, Queues: []int{2}, Tap: tapName}); err != nil {
		t.Errorf("the tap after its VM went: %v", err)
	}
}

// A port may not be the loopback device, nor another VM's tap unless asked
// for; then Ports names the other VM.
func TestPortTargetsChecked(t *testing.T) {
	topo := testnet.Topology(t, 4)
	dp := openDP(t, topo)
	vm1 := addVM(t, dp, "vm1", mac1, 1)
	vm2 := addVM(t, dp, "vm2", mac2, 2)
	other := vm2.Tap().Name()
	if err := vm1.AddPort(1, "lo"); !errors.Is(err, hostnet.ErrInvalid) || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("port to lo: %v", err)
	}
	if err := vm1.AddPort(1, other); !errors.Is(err, hostnet.ErrInvalid) || !strings.Contains(err.Error(), "is VM vm2's tap") || !strings.Contains(err.Error(), "cross") {
		t.Errorf("port to vm2's tap: %v", err)
	}
	if len(vm1.Ports()) != 1 {
		t.Fatalf("refused ports were added: %+v", vm1.Ports())
	}
	if err := vm1.AddPortWith(1, other, hostnet.PortOptions{CrossVM: true}); err != nil {
		t.Fatalf("cross-VM port asked for: %v", err)
	}
	// The VM's own tap is not another VM's.
	if err := vm1.AddPort(2, vm1.Tap().Name()); err != nil {
		t.Errorf("port to its own tap: %v", err)
	}
	ports := vm1.Ports()
	if len(ports) != 3 || ports[1].VM != "vm2" || ports[2].VM != "" || ports[0].VM != "" {
		t.Errorf("ports: %+v", ports)
	}
}
