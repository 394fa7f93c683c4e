package hostnet_test

import (
	"errors"
	"net"
	"testing"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/nsrun"
)

// openAsQEMU opens the tap name as QEMU's -netdev tap,ifname=NAME (and
// libvirt's managed='no') does: IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, plus
// IFF_MULTI_QUEUE for more than one queue.
func openAsQEMU(t *testing.T, nsPath, name string, multiQueue bool) (fd int, err error) {
	t.Helper()
	err = nsrun.Do(nsPath, func() error {
		var e error
		if fd, e = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0); e != nil {
			return e
		}
		var req struct {
			Name  [unix.IFNAMSIZ]byte
			Flags uint16
			_     [22]byte
		}
		copy(req.Name[:], name)
		req.Flags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR
		if multiQueue {
			req.Flags |= unix.IFF_MULTI_QUEUE
		}
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); errno != 0 {
			unix.Close(fd)
			return errno
		}
		return nil
	})
	return fd, err
}

// A tap the daemon holds (multi-queue, its queues open) is refused to QEMU
// (EINVAL: "Unable to create tap device NAME: Invalid argument" in
// libvirt); a persistent tap made with QEMU's flags is what QEMU opens,
// with every queue QEMU's; Close deletes it, Keep leaves it to QEMU, and
// TakePersistentTap takes it back as the caller's own.
func TestPersistentTapForQEMU(t *testing.T) {
	ns := testnet.NewNetNS(t)
	held, err := hostnet.CreateTap(hostnet.TapOptions{Name: testnet.UniqueName("th"), NetNS: ns.Path()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { held.Close() })
	if fd, err := openAsQEMU(t, ns.Path(), held.Name(), false); !errors.Is(err, unix.EINVAL) {
		unix.Close(fd)
		t.Errorf("QEMU opening a held tap: %v, want EINVAL", err)
	}

	for _, queues := range []int{1, 2} {
		name := testnet.UniqueName("tq")
		tap, err := hostnet.CreatePersistentTap(hostnet.TapOptions{Name: name, Queues: queues, NetNS: ns.Path()})
		if err != nil {
			t.Fatal(err)
		}
		if !tap.Persistent() || tap.Adopted() || len(tap.Queues()) != 0 {
			t.Errorf("%d queues: persistent %v adopted %v %d queues held", queues, tap.Persistent(), tap.Adopted(), len(tap.Queues()))
		}
		var fds []int
		for i := 0; i < queues; i++ {
			fd, err := openAsQEMU(t, ns.Path(), name, queues > 1)
			if err != nil {
				t.Fatalf("%d queues: QEMU cannot open queue %d of the tap: %v", queues, i, err)
			}
			fds = append(fds, fd)
		}
		h, err := netlink.NewHandleAt(testnet.Runner(t, ns.Path()).Handle())
		if err != nil {
			t.Fatal(err)
		}
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		} else if l.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("tap %s is down", name)
		}
		// Keep: the tap stays for QEMU; taken back, Close deletes it.
		tap.Keep()
		tap.Close()
		if _, err := h.LinkByName(name); err != nil {
			t.Errorf("kept tap %s gone: %v", name, err)
		}
		again, err := hostnet.TakePersistentTap(ns.Path(), name)
		if err != nil || !again.Persistent() {
			t.Fatalf("take tap %s back: %v", name, err)
		}
		for _, fd := range fds {
			unix.Close(fd)
		}
		if err := again.Close(); err != nil {
			t.Error(err)
		}
		if _, err := h.LinkByName(name); err == nil {
			t.Errorf("tap %s left after Close", name)
		}
		h.Close()
	}
}
