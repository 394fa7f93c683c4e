package traffic

import (
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openTap creates a multi-queue tap named name in the namespace at nsPath
// (the interface goes when the last queue closes) and returns its queues,
// non-blocking, closed when the test ends.
func openTap(t *testing.T, nsPath, name string, queues int) []*os.File {
	t.Helper()
	var files []*os.File
	t.Cleanup(func() {
		for _, f := range files {
			f.Close()
		}
	})
	err := inNS(nsPath, func() error {
		for i := 0; i < queues; i++ {
			fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			ifr, err := unix.NewIfreq(name)
			if err != nil {
				unix.Close(fd)
				return err
			}
			ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_MULTI_QUEUE)
			if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
				unix.Close(fd)
				return err
			}
			files = append(files, os.NewFile(uintptr(fd), name))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("open tap %s: %v", name, err)
	}
	return files
}

// TestCounterTap counts frames sent into a tap from its network side: per
// tag, duplicates, unmarked frames, missing sequence numbers.
func TestCounterTap(t *testing.T) {
	requireRoot(t)
	name, path := newNS(t, "c")
	// No IPv6 noise (router solicitations, MLD) on the tap.
	run(t, "ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	queues := openTap(t, path, "tap0", 2)
	run(t, "ip", "-n", name, "link", "set", "tap0", "up")

	var frames [][]byte
	add := func(spec FrameSpec, seqs ...uint32) {
		for _, s := range seqs {
			b := make([]byte, 128)
			n, err := spec.Build(b, s)
			if err != nil {
				t.Fatal(err)
			}
			frames = append(frames, b[:n])
		}
	}
	seqs := func(n uint32) []uint32 {
		s := make([]uint32, n)
		for i := range s {
			s[i] = uint32(i)
		}
		return s
	}
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x33}
	for f := uint16(0); f < 4; f++ { // spread over both tap queues
		add(FrameSpec{Dst: mac, Src: mac, SrcPort: 100 + f, Tag: 1}, seqs(300)[f*75:(f+1)*75]...)
	}
	add(FrameSpec{Dst: mac, Src: mac, Tag: 2}, seqs(200)...)
	add(FrameSpec{Dst: mac, Src: mac, Tag: 1}, 5, 6)          // duplicates
	add(FrameSpec{Dst: mac, Src: mac, Tag: 3}, DupTrackLimit) // not tracked
	for i := 0; i < 3; i++ {                                  // unmarked
		b := make([]byte, 64)
		copy(b, mac)
		copy(b[6:], mac)
		b[12], b[13] = 0x08, 0x06
		frames = append(frames, b)
	}
	packetSendFrames(t, path, "tap0", frames)

	start := time.Now()
	c := NewCounter(queues[0], queues[1])
	if !c.Wait(503, 5*time.Second) {
		t.Errorf("counted %d of 503 marked frames", c.Total())
	}
	if m := c.Missing(1, 300); m != 0 {
		t.Errorf("tag 1: %d missing", m)
	}
	if m := c.Missing(2, 250); m != 50 {
		t.Errorf("tag 2: %d of 250 missing, want 50", m)
	}
	c.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Wait and Close took %v", d)
	}
	s := c.Snapshot()
	for _, err := range s.Errors {
		t.Error(err)
	}
	if s.ByTag[1] != 302 || s.ByTag[2] != 200 || s.ByTag[3] != 1 || len(s.ByTag) != 3 {
		t.Errorf("by tag %v", s.ByTag)
	}
	if s.Duplicates != 2 || s.DupsByTag[1] != 2 || len(s.DupsByTag) != 1 {
		t.Errorf("duplicates %d by tag %v", s.Duplicates, s.DupsByTag)
	}
	if s.Unmarked != 3 {
		t.Errorf("unmarked %d, want 3", s.Unmarked)
	}
	if s.BySource[0]+s.BySource[1] != 506 {
		t.Errorf("frames per tap queue %v, want 506 in all", s.BySource)
	}
	t.Logf("frames per tap queue %v", s.BySource)

	// Nothing more comes: CountFrames returns at its deadline.
	packetSendFrames(t, path, "tap0", frames[:5])
	start = time.Now()
	s = CountFrames(100, 300*time.Millisecond, queues[0], queues[1])
	if d := time.Since(start); d < 300*time.Millisecond || d > 2*time.Second {
		t.Errorf("CountFrames with a 300ms deadline took %v", d)
	}
	if s.ByTag[1] != 5 || len(s.Errors) != 0 {
		t.Errorf("second count: %+v", s)
	}
}

func TestCounterNoAllocs(t *testing.T) {
	c := newCounter(ParseMarker, nil)
	c.bySource = make([]uint64, 1)
	buf := make([]byte, 64)
	spec := FrameSpec{Tag: 4}
	seq := uint32(0)
	for ; seq < 100000; seq++ { // grow the record first
		spec.Build(buf, seq)
		c.count(0, buf)
	}
	seq = 0
	allocs := testing.AllocsPerRun(10000, func() {
		spec.Build(buf, seq)
		c.count(0, buf)
		seq++
	})
	if allocs != 0 {
		t.Errorf("%v allocations per frame", allocs)
	}
	if s := c.Snapshot(); s.Duplicates != 10001 {
		t.Errorf("duplicates %d", s.Duplicates)
	}
}

// packetSendFrames sends frames with AF_PACKET out of ifname.
func packetSendFrames(t *testing.T, nsPath, ifname string, frames [][]byte) {
	t.Helper()
	err := inNS(nsPath, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Protocol: htons(unix.ETH_P_ALL)}
		for _, f := range frames {
			if err := unix.Sendto(fd, f, 0, sa); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
