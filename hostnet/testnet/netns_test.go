package testnet

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

func TestUniqueName(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 300; i++ {
		n := UniqueName("a-rather-long-prefix")
		if len(n) > 15 {
			t.Fatalf("%q is longer than 15 characters", n)
		}
		if seen[n] {
			t.Fatalf("%q repeated", n)
		}
		seen[n] = true
	}
	if n := UniqueName("va"); !strings.HasPrefix(n, "va") || len(n) != 8 {
		t.Errorf("UniqueName(va) = %q", n)
	}
}

func TestTestMAC(t *testing.T) {
	m := TestMAC(0x0102)
	if m.String() != "02:78:68:00:01:02" || m[0]&1 != 0 || m[0]&2 == 0 {
		t.Errorf("TestMAC = %s, want a locally administered unicast address", m)
	}
}

func TestNetNSAndVeth(t *testing.T) {
	self, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()

	var a, b *NetNS
	t.Run("setup", func(t *testing.T) {
		a, b = NewNetNS(t), NewNetNS(t)
		if !strings.HasPrefix(a.Name(), "xh-") || a.Name() == b.Name() {
			t.Fatalf("names %q %q", a.Name(), b.Name())
		}
		if _, err := os.Stat(a.Path()); err != nil {
			t.Fatal(err)
		}
		la, lb := NewVethPair(t, a, "", b, "", 4)
		for _, l := range []netlink.Link{la, lb} {
			at := l.Attrs()
			if at.NumRxQueues != 4 || at.NumTxQueues != 4 || at.Flags&(1<<0) == 0 {
				t.Errorf("%s: rx %d tx %d flags %v", at.Name, at.NumRxQueues, at.NumTxQueues, at.Flags)
			}
		}
		SetMAC(t, b, lb.Attrs().Name, TestMAC(7))
		if l, err := b.Handle().LinkByName(lb.Attrs().Name); err != nil || l.Attrs().HardwareAddr.String() != TestMAC(7).String() {
			t.Errorf("MAC of %s: %v %v", lb.Attrs().Name, l, err)
		}
		// a's end is not visible in b, nor in the caller's namespace.
		if _, err := b.Handle().LinkByName(la.Attrs().Name); err == nil {
			t.Errorf("%s visible in %s", la.Attrs().Name, b.Name())
		}
		if _, err := netlink.LinkByName(la.Attrs().Name); err == nil {
			t.Errorf("%s visible in the test's namespace", la.Attrs().Name)
		}
		// Do runs inside the namespace and restores the thread.
		var inside netns.NsHandle
		err := a.Do(func() error {
			var err error
			inside, err = netns.Get()
			if err != nil {
				return err
			}
			_, err = netlink.LinkByName(la.Attrs().Name)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		defer inside.Close()
		if !inside.Equal(a.NsHandle()) {
			t.Error("Do did not run in the namespace")
		}
		want := errors.New("from f")
		if err := a.Do(func() error { return want }); err != want {
			t.Errorf("Do returned %v, want f's error", err)
		}
		now, _ := netns.Get()
		defer now.Close()
		if !now.Equal(self) {
			t.Error("the test's thread changed namespace")
		}
	})
	// The subtest's cleanups ran: both namespaces are gone, closing again
	// is harmless.
	for _, n := range []*NetNS{a, b} {
		if n == nil {
			continue
		}
		if _, err := os.Stat(n.Path()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", n.Path(), err)
		}
		if err := n.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	}
}

func TestVethInCallerNamespace(t *testing.T) {
	a := NewNetNS(t)
	var name string
	t.Run("setup", func(t *testing.T) {
		_, lb := NewVethPair(t, a, "", nil, "", 1)
		name = lb.Attrs().Name
		if _, err := netlink.LinkByName(name); err != nil {
			t.Fatalf("peer not in the caller's namespace: %v", err)
		}
	})
	if _, err := netlink.LinkByName(name); err == nil {
		t.Errorf("veth %s left behind", name)
	}
}
