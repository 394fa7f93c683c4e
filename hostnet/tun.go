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
	// persistent: a tap this process created for QEMU or libvirt to open
	// (CreatePersistentTap); Close deletes it.
	persistent bool
	nsPath     string
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

// QEMUTapFlags are the TUNSETIFF flags QEMU (-netdev tap,ifname=NAME) and
// libvirt (<interface type='ethernet'>) open a tap with; IFF_MULTI_QUEUE is
// added when they use more than one queue. The kernel refuses (EINVAL) to
// attach a queue whose IFF_MULTI_QUEUE differs from the device's.
const QEMUTapFlags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR

// CreatePersistentTap creates a tap for QEMU or libvirt to open by name: a
// persistent device with QEMUTapFlags (IFF_MULTI_QUEUE with more than one
// queue, as QEMU's queues=N and libvirt's <driver queues='N'/> ask), with
// no queue held by this process, so that every frame goes to the
// queues QEMU attaches. It is up, with IPv6 off and the given queue length
// (default 4096). Close deletes it. On error nothing is left.
func CreatePersistentTap(opts TapOptions) (_ *Tap, err error) {
	if opts.Name == "" || len(opts.Name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("%w: tap name %q: use 1-15 characters", ErrInvalid, opts.Name)
	}
	if opts.TxQueueLen == 0 {
		opts.TxQueueLen = 4096
	}
	t := &Tap{name: opts.Name, nsPath: opts.NetNS}
	err = nsrun.Do(opts.NetNS, func() error {
		if _, err := netlink.LinkByName(opts.Name); err == nil {
			return fmt.Errorf("%w: tap %s: a network interface of that name exists in %s", ErrExists, opts.Name, nsName(opts.NetNS))
		}
		flags := uint16(QEMUTapFlags)
		if opts.Queues > 1 {
			flags |= unix.IFF_MULTI_QUEUE
		}
		fd, err := tunSetIff(opts.Name, flags, false)
		if err != nil {
			return fmt.Errorf("create tap %s: %w", opts.Name, err)
		}
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETPERSIST, 1)
		if errno != 0 {
			unix.Close(fd)
			return fmt.Errorf("make tap %s persistent: %w", opts.Name, errno)
		}
		unix.Close(fd)
		l, err := netlink.LinkByName(opts.Name)
		if err != nil {
			return fmt.Errorf("find tap %s: %w", opts.Name, err)
		}
		t.index, t.persistent = l.Attrs().Index, true
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
		if t.persistent {
			t.Close()
		}
		return nil, err
	}
	return t, nil
}

// tunSetIff opens /dev/net/tun and attaches it to the tap name with flags.
func tunSetIff(name string, flags uint16, nonblock bool) (int, error) {
	oflags := unix.O_RDWR | unix.O_CLOEXEC
	if nonblock {
		oflags |= unix.O_NONBLOCK
	}
	fd, err := unix.Open("/dev/net/tun", oflags, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return -1, fmt.Errorf("%w: /dev/net/tun is missing (load the tun module: modprobe tun)", ErrNotSupported)
		}
		return -1, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	var req tunIfreq
	copy(req.Name[:], name)
	req.Flags = flags
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); errno != 0 {
		unix.Close(fd)
		return -1, fmt.Errorf("TUNSETIFF %s: %w", name, errno)
	}
	return fd, nil
}

// tunIfreq is struct ifreq with ifr_flags, the layout TUNSETIFF takes.
type tunIfreq struct {
	Name  [unix.IFNAMSIZ]byte
	Flags uint16
	_     [22]byte
}

func openTapQueue(name string) (*os.File, error) {
	fd, err := tunSetIff(name, unix.IFF_TAP|unix.IFF_NO_PI|unix.IFF_MULTI_QUEUE, true)
	if err != nil {
		return nil, err
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

// Persistent reports whether the tap is one CreatePersistentTap made (or
// one TakePersistentTap took): Close deletes it.
func (t *Tap) Persistent() bool { return t.persistent }

// Keep makes Close leave a persistent tap in place (the daemon stops;
// QEMU goes on using the tap, and the next daemon takes it again).
func (t *Tap) Keep() { t.persistent = false }

// TakePersistentTap takes an existing persistent tap (one a previous
// daemon made with CreatePersistentTap and left to QEMU, or one made with
// 'ip tuntap add') as this process's own: Close deletes it. A tap that is
// not persistent (QEMU's or libvirt's own) is adopted as AdoptTap does.
func TakePersistentTap(nsPath, name string) (*Tap, error) {
	t, err := AdoptTap(nsPath, name)
	if err != nil {
		return nil, err
	}
	err = nsrun.Do(nsPath, func() error {
		l, err := netlink.LinkByIndex(t.index)
		if err != nil {
			return fmt.Errorf("tap %q: %w", name, err)
		}
		if tt, ok := l.(*netlink.Tuntap); ok && !tt.NonPersist {
			t.persistent, t.adopted, t.nsPath = true, false, nsPath
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// Close closes the queues, which removes the device; a persistent tap is
// deleted (if it is still the device this Tap made). It may be called more
// than once.
func (t *Tap) Close() error {
	if t.persistent {
		t.persistent = false
		return nsrun.Do(t.nsPath, func() error {
			l, err := netlink.LinkByIndex(t.index)
			if err != nil || l.Attrs().Name != t.name {
				return nil // gone already
			}
			if err := netlink.LinkDel(l); err != nil {
				return fmt.Errorf("delete tap %s: %w", t.name, err)
			}
			return nil
		})
	}
	var errs []error
	for _, f := range t.queues {
		errs = append(errs, f.Close())
	}
	t.queues = nil
	return errors.Join(errs...)
}
