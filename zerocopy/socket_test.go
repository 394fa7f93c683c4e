package zerocopy

import (
	"net"
	"runtime/debug"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/traffic"
)

// redirectByQueue attaches to ifname (in topo's host namespace) an XDP
// program that redirects every frame into an XSKMAP at its RX queue index,
// and passes it to the stack when no socket is there. It returns the map;
// both go when the test ends.
func redirectByQueue(tb testing.TB, topo *hostnet.Topology) *ebpf.Map {
	tb.Helper()
	xsks, err := ebpf.NewMap(&ebpf.MapSpec{Name: "zc_test_xsks", Type: ebpf.XSKMap,
		KeySize: 4, ValueSize: 4, MaxEntries: uint32(topo.Queues)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { xsks.Close() })
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "zc_test_redir", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{
			// r2 = ctx->rx_queue_index (struct xdp_md: data, data_end,
			// data_meta, ingress_ifindex, rx_queue_index)
			asm.LoadMem(asm.R2, asm.R1, 16, asm.Word),
			asm.LoadMapPtr(asm.R1, xsks.FD()),
			// Low bits of flags: the action when the slot is empty.
			asm.Mov.Imm(asm.R3, 2 /* XDP_PASS */),
			asm.FnRedirectMap.Call(),
			asm.Return(),
		},
	})
	if err != nil {
		tb.Fatal(err)
	}
	defer prog.Close() // the link holds it
	host := testnet.Runner(tb, topo.HostNS)
	var l link.Link
	err = host.Do(func() error {
		ifi, err := net.InterfaceByName(topo.Uplink)
		if err != nil {
			return err
		}
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifi.Index, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		tb.Fatalf("attach redirect program to %s: %v", topo.Uplink, err)
	}
	tb.Cleanup(func() { l.Close() })
	return xsks
}

// openSocket opens a socket on topo's uplink with a fresh UMEM, closed when
// the test ends.
func openSocket(tb testing.TB, topo *hostnet.Topology, frames int, opts Options) *Socket {
	tb.Helper()
	u, err := AllocUMEM(frames, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { u.Close() })
	opts.NetNS, opts.Ifname, opts.UMEM = topo.HostNS, topo.Uplink, u
	s, err := Open(opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Error(err)
		}
	})
	return s
}

// rxResult is what a receiver saw.
type rxResult struct {
	received, unmarked, wrongTag, dups, tooHigh int
	err                                         error
}

// receive reads frames from s until want were received or the deadline
// passed, checking each frame's marker, and releases them in batches.
// progress counts the frames received so far.
func receive(s *Socket, tag uint16, want int, deadline time.Time, progress *atomic.Int64) rxResult {
	var r rxResult
	seen := make([]bool, want)
	descs := make([]Desc, 256)
	for r.received < want && time.Now().Before(deadline) {
		n := s.Receive(descs)
		if n == 0 {
			if err := s.Wait(20 * time.Millisecond); err != nil {
				r.err = err
				return r
			}
			continue
		}
		for _, d := range descs[:n] {
			r.received++
			m, ok := traffic.ParseMarker(s.Frame(d))
			switch {
			case !ok:
				r.unmarked++
			case m.Tag != tag:
				r.wrongTag++
			case int(m.Seq) >= want:
				r.tooHigh++
			case seen[m.Seq]:
				r.dups++
			default:
				seen[m.Seq] = true
			}
		}
		if err := s.Release(descs[:n]); err != nil {
			r.err = err
			return r
		}
		progress.Add(int64(n))
	}
	return r
}

// Bursts aimed at two queues of a 4-queue NIC reach the sockets on those
// queues exactly: every frame once, none lost, 5000 per queue through rings
// of 2048 with the frames recycled through the fill ring in batches.
//
// The sender goes as fast as the kernel takes frames and nothing slows it
// down when a reader falls behind, so each burst is at most 1000 frames (the
// rings hold 2048: half of them stay spare for frames the kernel took from
// the fill ring but had not yet placed when the reader refilled; with
// 2000-frame bursts CI saw 14 fill-ring-empty drops in one run) and the next
// starts when the reader has taken the previous one. Unpaced 5000-frame bursts lose frames here now and then (in
// about one run of three, up to half a burst): on these 2-CPU machines the
// reader is at times woken 3 to 20 ms late while the sender and its softirq
// keep the other CPU busy, and 2048 frames arrive in about 1 ms. Pinning the
// reader and the sender to different CPUs did not remove that. That is a
// sizing matter (RingSize, FillFrames: the frames a reader may fall behind),
// not a loss in this package; BenchmarkRXCopy reports the loss of unpaced
// traffic.
func TestIntegrationRXQueues(t *testing.T) {
	for _, c := range []struct {
		name string
		opts Options
	}{
		{"copy", Options{}},
		{"need_wakeup", Options{NeedWakeup: true}},
		{"busy_poll_spin", Options{BusyPoll: 20 * time.Microsecond, Spin: 50 * time.Microsecond}},
		{"busy_poll", Options{BusyPoll: 20 * time.Microsecond}},
		{"spin", Options{Spin: 50 * time.Microsecond}},
	} {
		t.Run(c.name, func(t *testing.T) { testRXQueues(t, c.opts) })
	}
}

func testRXQueues(t *testing.T, opts Options) {
	topo := testnet.Topology(t, 4)
	xsks := redirectByQueue(t, topo)
	const count = 5000 // per queue; the rings hold 2048
	queues := []int{1, 2}
	socks := map[int]*Socket{}
	for _, q := range queues {
		opts.Queue, opts.Dir = q, RX
		s := openSocket(t, topo, 4096, opts)
		if err := s.Register(xsks, uint32(q)); err != nil {
			t.Fatal(err)
		}
		socks[q] = s
	}
	results := make(chan struct {
		q int
		r rxResult
	}, len(queues))
	deadline := time.Now().Add(20 * time.Second)
	progress := map[int]*atomic.Int64{}
	for _, q := range queues {
		progress[q] = new(atomic.Int64)
		go func() {
			r := receive(socks[q], uint16(q), count, deadline, progress[q])
			results <- struct {
				q int
				r rxResult
			}{q, r}
		}()
	}
	sender, err := traffic.NewSender(topo.WireNS, topo.Wire)
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	const burst = 1000
	for _, q := range queues {
		spec := traffic.FrameSpec{Dst: topo.UplinkMAC, Src: topo.WireMAC, Size: 64 + 100*q, Tag: uint16(q)}
		for seq := 0; seq < count; seq += burst {
			n := min(burst, count-seq)
			if err := sender.Send(spec, q, uint32(seq), n); err != nil {
				t.Fatal(err)
			}
			for progress[q].Load() < int64(seq+n) && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
		}
	}
	for range queues {
		res := <-results
		q, r := res.q, res.r
		st, err := socks[q].Stats()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("queue %d: %+v; stats %+v", q, r, st)
		if r.err != nil {
			t.Errorf("queue %d: %v", q, r.err)
		}
		if r.received != count || r.unmarked+r.wrongTag+r.dups+r.tooHigh != 0 {
			t.Errorf("queue %d: received %d frames (%d unmarked, %d for other queues, %d duplicates, %d out of range), want %d with tag %d",
				q, r.received, r.unmarked, r.wrongTag, r.dups, r.tooHigh, count, q)
		}
		if st.RXDropped+st.RXRingFull+st.RXInvalidDescs+st.BadDescs != 0 {
			t.Errorf("queue %d: drops in stats %+v", q, st)
		}
		if st.RXFrames != count {
			t.Errorf("queue %d: stats count %d frames, want %d", q, st.RXFrames, count)
		}
	}
	// Nothing more arrives, and every frame is back in the pool or the
	// fill ring.
	time.Sleep(100 * time.Millisecond)
	for _, q := range queues {
		s := socks[q]
		if n := s.Receive(make([]Desc, 16)); n != 0 {
			t.Errorf("queue %d: %d more frames", q, n)
		}
		fill, _, _, _ := s.Rings()
		if inFill, inPool := fill.Len(), s.Pool().Len(); inFill+inPool != s.UMEM().Frames() {
			t.Errorf("queue %d: %d frames in the fill ring + %d in the pool, want %d", q, inFill, inPool, s.UMEM().Frames())
		}
	}
}

// Frames sent from a socket on the uplink arrive on the wire side, more of
// them than the UMEM has frames: completions come back to the pool.
func TestIntegrationTX(t *testing.T) {
	t.Run("copy", func(t *testing.T) { testTX(t, Options{}) })
	t.Run("need_wakeup", func(t *testing.T) { testTX(t, Options{NeedWakeup: true}) })
}

func testTX(t *testing.T, opts Options) {
	topo := testnet.Topology(t, 4)
	const frames, count = 256, 5000
	opts.Queue, opts.Dir, opts.RingSize = 0, TX, 128
	s := openSocket(t, topo, frames, opts)
	pkt, err := traffic.OpenPacketSocket(topo.WireNS, topo.Wire)
	if err != nil {
		t.Fatal(err)
	}
	defer pkt.Close()
	counter := traffic.NewCounter(pkt)
	defer counter.Close()

	spec := traffic.FrameSpec{Dst: topo.WireMAC, Src: topo.UplinkMAC, Size: 100, Tag: 7}
	buf := make([]byte, count*spec.Size)
	out := make([][]byte, count)
	for i := range out {
		b := buf[i*spec.Size : (i+1)*spec.Size]
		if _, err := spec.Build(b, uint32(i)); err != nil {
			t.Fatal(err)
		}
		out[i] = b
	}
	deadline := time.Now().Add(10 * time.Second)
	sent := 0
	for sent < count && time.Now().Before(deadline) {
		// Batches larger than the TX ring (128): every call is short.
		n, err := s.Transmit(out[sent:min(sent+200, count)])
		if err != nil {
			t.Fatal(err)
		}
		sent += n
		if n == 0 {
			if err := s.Wait(10 * time.Millisecond); err != nil {
				t.Fatal(err)
			}
		}
	}
	for s.Outstanding() > 0 && time.Now().Before(deadline) {
		if err := s.Wait(10 * time.Millisecond); err != nil {
			t.Fatal(err)
		}
		s.Complete()
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stats %+v", st)
	if sent != count || s.Outstanding() != 0 || st.TXCompleted != count {
		t.Fatalf("queued %d of %d frames, %d completed, %d outstanding", sent, count, st.TXCompleted, s.Outstanding())
	}
	if st.TXShort == 0 || st.Kicks > uint64(count/64) {
		t.Errorf("want short Transmit calls (batches exceed the ring) and one kick per batch: %+v", st)
	}
	if s.Pool().Len() != frames {
		t.Errorf("pool has %d of %d frames after all completed", s.Pool().Len(), frames)
	}
	if st.TXInvalidDescs != 0 || st.BadDescs != 0 {
		t.Errorf("invalid descriptors: %+v", st)
	}
	counter.Wait(count, 5*time.Second)
	snap := counter.Snapshot()
	if snap.ByTag[7] != count || counter.Missing(7, count) != 0 || snap.Duplicates != 0 || len(snap.Errors) != 0 {
		t.Fatalf("wire side counted %d frames with tag 7 (%d missing, %d duplicates, errors %v), want %d",
			snap.ByTag[7], counter.Missing(7, count), snap.Duplicates, snap.Errors, count)
	}
}

// Wait sleeps in poll when there is nothing to do, and returns on time.
func TestIntegrationWaitIdle(t *testing.T) {
	topo := testnet.Topology(t, 2)
	s := openSocket(t, topo, 64, Options{Queue: 0, Dir: RX, RingSize: 64})
	start := time.Now()
	if err := s.Wait(50 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 40*time.Millisecond || el > 2*time.Second {
		t.Fatalf("Wait(50ms) on an idle socket returned after %v", el)
	}
	if n := s.Receive(make([]Desc, 4)); n != 0 {
		t.Fatalf("idle socket received %d frames", n)
	}
}

func TestOpenValidates(t *testing.T) {
	u, err := AllocUMEM(16, 2048)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for _, o := range []Options{
		{Ifindex: 1}, // no UMEM
		{UMEM: u},    // no interface
		{UMEM: u, Ifindex: 1, RingSize: 100},
		{UMEM: u, Ifindex: 1, Queue: -1},
		{UMEM: u, Ifindex: 1, Dir: 4},
	} {
		if s, err := Open(o); err == nil {
			s.Close()
			t.Errorf("Open(%+v) succeeded", o)
		} else {
			t.Log(err)
		}
	}
}

// A frame in memory that faults (a vhost-user guest's, shrunk under the
// daemon) panics out of Transmit under debug.SetPanicOnFault; the UMEM
// frames taken for the batch are back in the pool, nothing is queued, and
// the socket transmits afterwards.
func TestIntegrationTXFault(t *testing.T) {
	topo := testnet.Topology(t, 4)
	const frames = 64
	s := openSocket(t, topo, frames, Options{Queue: 0, Dir: TX, RingSize: 64})
	fd, err := unix.MemfdCreate("txfault", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, 8192); err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(fd, 0, 8192, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	spec := traffic.FrameSpec{Dst: topo.WireMAC, Src: topo.UplinkMAC, Size: 200, Tag: 7}
	good, across := mem[0:200], mem[4096-100:4096+100]
	for _, b := range [][]byte{good, across} {
		if _, err := spec.Build(b, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Ftruncate(fd, 4096); err != nil {
		t.Fatal(err)
	}
	panicked := func() (r any) {
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer func() { r = recover() }()
		s.Transmit([][]byte{good, good, across, good})
		return nil
	}()
	if _, ok := panicked.(interface{ Addr() uintptr }); !ok {
		t.Fatalf("Transmit of a frame in shrunk memory: recovered %v, want a memory fault", panicked)
	}
	if s.Pool().Len() != frames || s.Outstanding() != 0 {
		t.Fatalf("after the fault: %d of %d frames in the pool, %d outstanding", s.Pool().Len(), frames, s.Outstanding())
	}
	if n, err := s.Transmit([][]byte{good, good}); n != 2 || err != nil {
		t.Fatalf("Transmit after the fault: %d, %v", n, err)
	}
}
