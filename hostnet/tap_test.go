package hostnet_test

import (
	"errors"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
)

// tunFlags reads a queue fd's IFF_* flags with TUNGETIFF.
func tunFlags(t *testing.T, fd uintptr) uint16 {
	t.Helper()
	var req struct {
		Name  [unix.IFNAMSIZ]byte
		Flags uint16
		_     [22]byte
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, unix.TUNGETIFF, uintptr(unsafe.Pointer(&req))); errno != 0 {
		t.Fatalf("TUNGETIFF: %v", errno)
	}
	return req.Flags
}

func TestCreateTap(t *testing.T) {
	ns := testnet.NewNetNS(t)
	name := testnet.UniqueName("tap")
	tap, err := hostnet.CreateTap(hostnet.TapOptions{Name: name, Queues: 3, NetNS: ns.Path()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tap.Close() })

	if tap.Name() != name || len(tap.Queues()) != 3 || tap.Adopted() {
		t.Fatalf("tap %s, %d queues, adopted %v", tap.Name(), len(tap.Queues()), tap.Adopted())
	}
	l, err := ns.Handle().LinkByName(name)
	if err != nil {
		t.Fatalf("tap not in its namespace: %v", err)
	}
	if l.Attrs().Index != tap.Index() || l.Type() != "tuntap" || l.Attrs().Flags&unix.IFF_UP == 0 {
		t.Errorf("link %s: index %d (tap says %d), type %s, flags %v", name, l.Attrs().Index, tap.Index(), l.Type(), l.Attrs().Flags)
	}
	if tt, ok := l.(*netlink.Tuntap); !ok || tt.Mode != netlink.TUNTAP_MODE_TAP {
		t.Errorf("link %s is %#v, want a tap", name, l)
	}
	if _, err := netlink.LinkByName(name); err == nil {
		t.Errorf("tap %s visible in the test's own namespace", name)
	}
	for i, q := range tap.Queues() {
		fl, err := unix.FcntlInt(q.Fd(), unix.F_GETFL, 0)
		if err != nil {
			t.Fatal(err)
		}
		if fl&unix.O_NONBLOCK == 0 {
			t.Errorf("queue %d is blocking", i)
		}
		want := uint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_MULTI_QUEUE)
		if got := tunFlags(t, q.Fd()); got&(want|unix.IFF_VNET_HDR|unix.IFF_TUN) != want {
			t.Errorf("queue %d flags %#x, want %#x without IFF_VNET_HDR", i, got, want)
		}
	}

	// A frame written by the "guest" on any queue is received by the host
	// side of the tap.
	frame := make([]byte, 60)
	copy(frame, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x78, 0x68, 0, 0, 1, 0x88, 0xb5})
	for _, q := range tap.Queues() {
		if _, err := q.Write(frame); err != nil {
			t.Fatalf("write a frame: %v", err)
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		l, err := ns.Handle().LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if s := l.Attrs().Statistics; s != nil && s.RxPackets >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tap %s received %+v, want 3 packets", name, l.Attrs().Statistics)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Closing the queues removes the device; Close again is harmless.
	if err := tap.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := ns.Handle().LinkByName(name); err == nil {
		t.Errorf("tap %s still exists after Close", name)
	}
	if err := tap.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestCreateTapErrors(t *testing.T) {
	ns := testnet.NewNetNS(t)
	taken, _ := testnet.NewVethPair(t, ns, "", ns, "", 1)
	name := taken.Attrs().Name
	_, err := hostnet.CreateTap(hostnet.TapOptions{Name: name, NetNS: ns.Path()})
	if !errors.Is(err, hostnet.ErrExists) || !strings.Contains(err.Error(), name) {
		t.Errorf("tap over an existing veth: got %v, want ErrExists naming %s", err, name)
	}
	if l, err := ns.Handle().LinkByName(name); err != nil || l.Type() != "veth" {
		t.Errorf("the existing device was disturbed: %v %v", l, err)
	}

	for _, bad := range []string{"", "sixteen-chars-xx"} {
		if _, err := hostnet.CreateTap(hostnet.TapOptions{Name: bad, NetNS: ns.Path()}); !errors.Is(err, hostnet.ErrInvalid) {
			t.Errorf("name %q: got %v, want ErrInvalid", bad, err)
		}
	}

	// Adopting: a tap that exists is found by name; a veth is refused.
	tname := testnet.UniqueName("tap")
	tap, err := hostnet.CreateTap(hostnet.TapOptions{Name: tname, NetNS: ns.Path()})
	if err != nil {
		t.Fatal(err)
	}
	defer tap.Close()
	ad, err := hostnet.AdoptTap(ns.Path(), tname)
	if err != nil || !ad.Adopted() || ad.Index() != tap.Index() || len(ad.Queues()) != 0 {
		t.Errorf("AdoptTap: %+v, %v", ad, err)
	}
	if err := ad.Close(); err != nil {
		t.Error(err)
	}
	if _, err := ns.Handle().LinkByName(tname); err != nil {
		t.Errorf("closing an adopted tap removed the device: %v", err)
	}
	if _, err := hostnet.AdoptTap(ns.Path(), name); !errors.Is(err, hostnet.ErrInvalid) {
		t.Errorf("adopting a veth: got %v, want ErrInvalid", err)
	}
	if _, err := hostnet.AdoptTap(ns.Path(), "nothere0"); !errors.Is(err, hostnet.ErrNoSuchInterface) {
		t.Errorf("adopting a missing tap: got %v, want ErrNoSuchInterface", err)
	}
}
