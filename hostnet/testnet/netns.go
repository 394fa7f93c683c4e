package testnet

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// ifNameMax is the longest network interface name the kernel accepts
// (IFNAMSIZ-1).
const ifNameMax = 15

var nameSeq atomic.Uint32

// UniqueName returns prefix followed by a suffix no other name from this
// process shares and that other processes are unlikely to pick, at most 15
// characters in all (the kernel's limit for interface names): the prefix is
// shortened if need be.
func UniqueName(prefix string) string {
	var b [2]byte
	_, _ = rand.Read(b[:])
	suffix := fmt.Sprintf("%s%02x", hex.EncodeToString(b[:]), byte(nameSeq.Add(1)))
	if max := ifNameMax - len(suffix); len(prefix) > max {
		prefix = prefix[:max]
	}
	return prefix + suffix
}

// NetNS is a named network namespace (/run/netns/NAME) that exists for the
// length of one test. Nothing in it changes the namespace of the calling
// thread: netlink goes through Handle, and code that must run inside the
// namespace (ioctls, /dev/net/tun, AF_PACKET) goes through Do.
type NetNS struct {
	name   string
	ns     netns.NsHandle
	handle *netlink.Handle
	once   sync.Once
	err    error
}

// NewNetNS creates a namespace named "xh-" and a unique suffix, with lo up.
// It is deleted, with every interface in it, when the test ends, also when
// the test fails.
func NewNetNS(tb testing.TB) *NetNS {
	tb.Helper()
	RequireRoot(tb)
	n, err := newNetNS(UniqueName("xh-"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := n.Close(); err != nil {
			tb.Error(err)
		}
	})
	if err := n.handle.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo"}}); err != nil {
		tb.Fatalf("bring lo up in %s: %v", n.name, err)
	}
	return n
}

func newNetNS(name string) (*NetNS, error) {
	// netns.NewNamed moves the calling thread into the new namespace. Do it
	// on a thread of its own that stays locked, so the runtime retires the
	// thread when the goroutine ends and no other code ever runs there.
	type result struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := netns.NewNamed(name)
		ch <- result{ns, err}
	}()
	r := <-ch
	if r.err != nil {
		return nil, fmt.Errorf("create network namespace %s: %w", name, r.err)
	}
	h, err := netlink.NewHandleAt(r.ns)
	if err != nil {
		r.ns.Close()
		_ = netns.DeleteNamed(name)
		return nil, fmt.Errorf("netlink handle in network namespace %s: %w", name, err)
	}
	return &NetNS{name: name, ns: r.ns, handle: h}, nil
}

// Name is the namespace's name, as `ip netns list` shows it.
func (n *NetNS) Name() string { return n.name }

// Path is the namespace's path, /run/netns/NAME: what hostnet and nsrun
// take to address a namespace.
func (n *NetNS) Path() string { return filepath.Join("/run/netns", n.name) }

// Handle is a netlink handle working in the namespace.
func (n *NetNS) Handle() *netlink.Handle { return n.handle }

// NsHandle is the namespace's file descriptor, owned by n (do not close it).
func (n *NetNS) NsHandle() netns.NsHandle { return n.ns }

// Fd is the namespace's file descriptor, owned by n (do not close it).
func (n *NetNS) Fd() int { return int(n.ns) }

// Do runs f on a locked OS thread that is inside the namespace, and returns
// its error. The thread returns to its namespace afterwards; if that fails it
// stays locked and the runtime discards it, so no other code runs in the
// wrong namespace. f must not start goroutines that rely on being in the
// namespace: they run on other threads.
func (n *NetNS) Do(f func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- fmt.Errorf("get current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(n.ns); err != nil {
			ch <- fmt.Errorf("enter network namespace %s: %w", n.name, err)
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			ch <- errors.Join(ferr, fmt.Errorf("return from network namespace %s: %w", n.name, err))
			return
		}
		runtime.UnlockOSThread()
		ch <- ferr
	}()
	return <-ch
}

// Close deletes the namespace and everything in it. NewNetNS arranges for
// it to be called; calling it again does nothing.
func (n *NetNS) Close() error {
	n.once.Do(func() {
		n.handle.Close()
		errs := []error{n.ns.Close()}
		if err := netns.DeleteNamed(n.name); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("delete network namespace %s: %w", n.name, err))
		}
		n.err = errors.Join(errs...)
	})
	return n.err
}

// handleFor returns the netlink handle of ns, or of the caller's
// namespace if ns is nil.
func handleFor(ns *NetNS) *netlink.Handle {
	if ns == nil {
		return &netlink.Handle{}
	}
	return ns.handle
}

func nsLabel(ns *NetNS) string {
	if ns == nil {
		return "this network namespace"
	}
	return "network namespace " + ns.name
}

// NewVethPair creates a veth pair with the given number of RX and TX queues
// (at least 1) on each end: aName in a, bName in b (a nil namespace is the
// caller's own). Both ends are up and have IPv6 off, so the kernel sends
// nothing on its own. Names come from UniqueName when empty. The pair is
// deleted when the test ends (or with its namespace).
func NewVethPair(tb testing.TB, a *NetNS, aName string, b *NetNS, bName string, queues int) (aLink, bLink netlink.Link) {
	tb.Helper()
	RequireRoot(tb)
	if queues < 1 {
		queues = 1
	}
	if aName == "" {
		aName = UniqueName("va")
	}
	if bName == "" {
		bName = UniqueName("vb")
	}
	ha, hb := handleFor(a), handleFor(b)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = aName
	attrs.NumTxQueues = queues
	attrs.NumRxQueues = queues
	veth := &netlink.Veth{
		LinkAttrs:       attrs,
		PeerName:        bName,
		PeerNumTxQueues: uint32(queues),
		PeerNumRxQueues: uint32(queues),
	}
	if b != nil {
		veth.PeerNamespace = netlink.NsFd(b.Fd())
	} else if a != nil {
		// The request goes to a's namespace; put the peer back in ours.
		self, err := netns.Get()
		if err != nil {
			tb.Fatalf("get current network namespace: %v", err)
		}
		defer self.Close()
		veth.PeerNamespace = netlink.NsFd(int(self))
	}
	if err := ha.LinkAdd(veth); err != nil {
		tb.Fatalf("create veth %s (%s) <-> %s (%s) with %d queues: %v", aName, nsLabel(a), bName, nsLabel(b), queues, err)
	}
	tb.Cleanup(func() {
		// Deleting one end deletes both; gone already is fine (its
		// namespace went first).
		if l, err := ha.LinkByName(aName); err == nil {
			if err := ha.LinkDel(l); err != nil {
				tb.Errorf("delete veth %s: %v", aName, err)
			}
		}
	})
	for _, end := range []struct {
		h    *netlink.Handle
		ns   *NetNS
		name string
		link *netlink.Link
	}{{ha, a, aName, &aLink}, {hb, b, bName, &bLink}} {
		l, err := end.h.LinkByName(end.name)
		if err != nil {
			tb.Fatalf("find veth end %s in %s: %v", end.name, nsLabel(end.ns), err)
		}
		disableIPv6(end.ns, end.name)
		if err := end.h.LinkSetUp(l); err != nil {
			tb.Fatalf("bring %s up in %s: %v", end.name, nsLabel(end.ns), err)
		}
		if l, err = end.h.LinkByName(end.name); err != nil {
			tb.Fatalf("find veth end %s in %s: %v", end.name, nsLabel(end.ns), err)
		}
		*end.link = l
	}
	return aLink, bLink
}

// disableIPv6 stops the kernel from sending router and neighbour
// solicitations on an interface, which would disturb packet counts. Best
// effort.
func disableIPv6(ns *NetNS, ifname string) {
	write := func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/"+ifname+"/disable_ipv6", []byte("1"), 0)
	}
	if ns == nil {
		_ = write()
		return
	}
	_ = ns.Do(write)
}

// TestMAC returns a deterministic locally administered unicast MAC address,
// 02:78:68:00:HI:LO for n = HI<<8|LO ("xh" in the second and third bytes).
func TestMAC(n uint16) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0x78, 0x68, 0x00, byte(n >> 8), byte(n)}
}

// SetMAC sets the MAC address of the interface named ifname in ns (nil: the
// caller's namespace) and returns the link as it is now.
func SetMAC(tb testing.TB, ns *NetNS, ifname string, mac net.HardwareAddr) netlink.Link {
	tb.Helper()
	h := handleFor(ns)
	l, err := h.LinkByName(ifname)
	if err != nil {
		tb.Fatalf("find %s in %s: %v", ifname, nsLabel(ns), err)
	}
	if err := h.LinkSetHardwareAddr(l, mac); err != nil {
		tb.Fatalf("set MAC of %s in %s to %s: %v", ifname, nsLabel(ns), mac, err)
	}
	if l, err = h.LinkByName(ifname); err != nil {
		tb.Fatalf("find %s in %s: %v", ifname, nsLabel(ns), err)
	}
	return l
}
