package hostnet

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/nsrun"
)

// Tap is a VM's tap device: either one this process created and whose
// queues it holds open (the device exists as long as they are open: Close
// removes it), or one that exists already and that it adopted (QEMU or
// libvirt holds its queues; Close leaves it alone).
type Tap struct {
	name    string
	index   int
	queues  []*os.File
	adopted bool
}

// AdoptTap takes an existing tap device by name, in the namespace at nsPath,
// without opening its queues: whoever created it (QEMU, libvirt) reads and
// writes it.
func AdoptTap(nsPath, name string) (*Tap, error) {
	var t *Tap
	err := nsrun.Do(nsPath, func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return fmt.Errorf("tap %q: %w in %s", name, ErrNoSuchInterface, nsName(nsPath))
		}
		if l.Type() != "tuntap" {
			return fmt.Errorf("%w: %s is a %s device, not a tap", ErrInvalid, name, l.Type())
		}
		if tt, ok := l.(*netlink.Tuntap); ok && tt.Mode != netlink.TUNTAP_MODE_TAP {
			return fmt.Errorf("%w: %s is a tun device; a VM needs a tap", ErrInvalid, name)
		}
		t = &Tap{name: name, index: l.Attrs().Index, adopted: true}
		return nil
	})
	return t, err
}

// Adopted reports whether the tap existed before and belongs to someone else.
func (t *Tap) Adopted() bool { return t.adopted }

// TapOptions describe a tap to create.
type TapOptions struct {
	Name   string // required, at most 15 characters
	Queues int    // default 1
	NetNS  string // namespace path; "" for the caller's
	// TxQueueLen is the number of frames the tap holds for its reader
	// (per queue); default 4096. Frames beyond it are dropped and counted
	// in the tap's tx_dropped.
	TxQueueLen int
}

// CreateTap creates a tap device with IFF_TAP|IFF_NO_PI|IFF_MULTI_QUEUE and
// opens its queues non-blocking (as QEMU does; a non-blocking write is what
// lets the kernel run the tap's XDP program on the fast path). The device is
// up, its IPv6 is off (it is an L2 port to a VM, not a host interface), and
// it is gone when the Tap is closed. On error nothing is left.
func CreateTap(opts TapOptions) (_ *Tap, err error) {
	if opts.Name == "" || len(opts.Name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("%w: tap name %q: use 1-15 characters", ErrInvalid, opts.Name)
	}
	if opts.Queues == 0 {
		opts.Queues = 1
	}
	if opts.TxQueueLen == 0 {
		opts.TxQueueLen = 4096
	}
	ns, err := NewNSRunner(opts.NetNS)
	if err != nil {
		return nil, err
	}
	defer ns.Close()

	t := &Tap{name: opts.Name}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	err = ns.Do(func() error {
		if _, err := netlink.LinkByName(opts.Name); err == nil {
			return fmt.Errorf("%w: tap %s: a network interface of that name exists in %s", ErrExists, opts.Name, nsName(opts.NetNS))
		}
		for i := 0; i < opts.Queues; i++ {
			f, err := openTapQueue(opts.Name)
			if err != nil {
				return fmt.Errorf("open queue %d of tap %s: %w", i, opts.Name, err)
			}
			t.queues = append(t.queues, f)
		}
		l, err := netlink.LinkByName(opts.Name)
		if err != nil {
			return fmt.Errorf("find tap %s: %w", opts.Name, err)
		}
		t.index = l.Attrs().Index
		_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+opts.Name+"/disable_ipv6", []byte("1"), 0)
		if err := netlink.LinkSetTxQLen(l, opts.TxQueueLen); err != nil {
			return fmt.Errorf("set queue length of tap %s: %w", opts.Name, err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("bring tap %s up: %w", opts.Name, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// tunIfreq is struct ifreq with ifr_flags, the layout TUNSETIFF takes.
type tunIfreq struct {
	Name  [unix.IFNAMSIZ]byte
	Flags uint16
	_     [22]byte
}

func openTapQueue(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("%w: /dev/net/tun is missing (load the tun module: modprobe tun)", ErrNotSupported)
		}
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	var req tunIfreq
	copy(req.Name[:], name)
	req.Flags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_MULTI_QUEUE
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); errno != 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %s: %w", name, errno)
	}
	// A non-blocking fd handed to os.NewFile joins the runtime poller, so
	// reads can have deadlines.
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}

// Name is the device name.
func (t *Tap) Name() string { return t.name }

// Index is the device's ifindex in its namespace.
func (t *Tap) Index() int { return t.index }

// Queues are the open queue files (one per tap queue) of a tap this
// process created; the tap's reader (a test, the demo) reads frames from
// them and writes frames to them. An adopted tap has none.
func (t *Tap) Queues() []*os.File { return t.queues }

// Close closes the queues, which removes the device. It may be called more
// than once.
func (t *Tap) Close() error {
	var errs []error
	for _, f := range t.queues {
		errs = append(errs, f.Close())
	}
	t.queues = nil
	return errors.Join(errs...)
}
