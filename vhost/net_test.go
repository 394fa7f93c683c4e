package vhost

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestDeviceFeatures(t *testing.T) {
	d, err := NewNetDevice(NetConfig{})
	if err != nil {
		t.Fatal(err)
	}
	want := FeatureVersion1 | FeatureNetMrgRxbuf | FeatureRingEventIdx | FeatureRingIndirectDesc | FeatureProtocolFeatures |
		FeatureLogAll | FeatureNetGuestAnnounce
	if d.Features() != want {
		t.Errorf("offered %#x, want %#x", d.Features(), want)
	}
	d2, _ := NewNetDevice(NetConfig{QueuePairs: 4})
	if d2.Features()&FeatureNetMQ == 0 {
		t.Error("MQ not offered with 4 pairs")
	}
	for _, cfg := range []NetConfig{{QueuePairs: -1}, {QueuePairs: MaxQueuePairs + 1}, {TXBatch: -1}, {BusyPoll: -1}} {
		if _, err := NewNetDevice(cfg); err == nil {
			t.Errorf("NewNetDevice(%+v) accepted", cfg)
		}
	}
}

func TestDeviceRXMergeable(t *testing.T) {
	ts := startServer(t, NetConfig{})
	f := dial(t, ts.path)
	f.setup(setupOpts{})
	waitFor(t, "pair 0 ready", func() bool { return ts.dev.Ready(0) })

	f.postRX(0, 16, 256)
	frames := [][]byte{frame(100, 1), frame(1000, 2), frame(60, 3), frame(244, 4)}
	n, err := ts.dev.Deliver(0, frames)
	if n != 4 || err != nil {
		t.Fatalf("Deliver = %d, %v", n, err)
	}
	// 112 -> 1 buffer, 1012 -> 4, 72 -> 1, 256 -> 1
	if u := f.rings[0].usedIdx(); u != 7 {
		t.Fatalf("used idx %d, want 7", u)
	}
	got := f.receive(0)
	if len(got) != 4 {
		t.Fatalf("received %d frames", len(got))
	}
	for i := range frames {
		if !bytes.Equal(got[i], frames[i]) {
			t.Errorf("frame %d: got %d bytes, want %d", i, len(got[i]), len(frames[i]))
		}
	}
	if c := readEvent(f.call[0]); c != 1 {
		t.Errorf("%d call writes for one batch, want 1", c)
	}

	// The driver asks for an interrupt only once used idx passes 100.
	f.rings[0].setUsedEvent(100)
	if n, _ := ts.dev.Deliver(0, frames[:2]); n != 2 {
		t.Fatalf("delivered %d", n)
	}
	if c := readEvent(f.call[0]); c != 0 {
		t.Errorf("interrupt although used_event is far ahead")
	}
	f.receive(0)
	st := ts.dev.Stats()[0]
	if st.Packets != 6 || st.Bytes != 100+1000+60+244+1100 || st.Drops != 0 || st.Calls != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestDeviceRXOutOfBuffers(t *testing.T) {
	ts := startServer(t, NetConfig{})
	f := dial(t, ts.path)
	f.setup(setupOpts{})
	frames := [][]byte{frame(1500, 1), frame(1500, 2), frame(1500, 3), frame(1500, 4)}
	if n, err := ts.dev.Deliver(0, frames); n != 0 || err != nil {
		t.Fatalf("no buffers: Deliver = %d, %v", n, err)
	}
	// Two 2048-byte buffers and one 1024: the third frame would need two.
	f.postRX(0, 2, 2048)
	f.postRX(0, 1, 1024)
	n, err := ts.dev.Deliver(0, frames)
	if n != 2 || err != nil {
		t.Fatalf("Deliver = %d, %v", n, err)
	}
	if got := f.receive(0); len(got) != 2 || !bytes.Equal(got[1], frames[1]) {
		t.Fatalf("received %d frames", len(got))
	}
	// The half-used buffer was given back: a small frame takes it.
	if n, _ := ts.dev.Deliver(0, [][]byte{frame(500, 9)}); n != 1 {
		t.Fatalf("small frame not delivered into the returned buffer")
	}
	if st := ts.dev.Stats()[0]; st.Drops != 4+2 || st.Packets != 3 {
		t.Errorf("stats %+v", st)
	}
	if n, _ := ts.dev.Deliver(0, [][]byte{make([]byte, MaxFrameSize+1)}); n != 0 {
		t.Error("oversized frame delivered")
	}
	if _, err := ts.dev.Deliver(1, frames); err == nil {
		t.Error("Deliver to a missing pair succeeded")
	}
}

func TestDeviceRXNotMergeable(t *testing.T) {
	ts := startServer(t, NetConfig{})
	f := dial(t, ts.path)
	f.setup(setupOpts{features: FeatureVersion1 | FeatureRingEventIdx | FeatureProtocolFeatures})
	f.postRX(0, 1, 512)
	f.postRX(0, 1, 2048)
	// The big frame does not fit the first buffer: dropped, the buffer kept
	// for the small one.
	n, err := ts.dev.Deliver(0, [][]byte{frame(1500, 1), frame(400, 2)})
	if n != 1 || err != nil {
		t.Fatalf("Deliver = %d, %v", n, err)
	}
	got := f.receive(0)
	if len(got) != 1 || !bytes.Equal(got[0], frame(400, 2)) {
		t.Fatalf("received %d frames", len(got))
	}
}

// Offer tells a caller that keeps frames which ones it may let go: the
// placed ones and those no guest buffer can hold, never the ones still
// waiting for buffers, and those are not counted as drops.
func TestDeviceRXOffer(t *testing.T) {
	ts := startServer(t, NetConfig{})
	f := dial(t, ts.path)
	f.setup(setupOpts{features: FeatureVersion1 | FeatureRingEventIdx | FeatureProtocolFeatures})
	frames := [][]byte{make([]byte, MaxFrameSize+1), frame(400, 1), frame(1500, 2), frame(400, 3)}
	f.postRX(0, 1, 512)
	f.postRX(0, 1, 512)
	// The oversized frame is consumed (dropped), the first 400 placed, the
	// 1500 dropped (it fits no 512-byte buffer without MRG_RXBUF), the
	// second 400 placed.
	placed, consumed, err := ts.dev.Offer(0, frames)
	if placed != 2 || consumed != 4 || err != nil {
		t.Fatalf("Offer = %d placed, %d consumed, %v; want 2, 4, nil", placed, consumed, err)
	}
	// Out of buffers: nothing consumed, nothing counted.
	before := ts.dev.Stats()[0]
	placed, consumed, err = ts.dev.Offer(0, frames[1:])
	if placed != 0 || consumed != 0 || err != nil {
		t.Fatalf("Offer without buffers = %d, %d, %v; want 0, 0, nil", placed, consumed, err)
	}
	if st := ts.dev.Stats()[0]; st.Drops != before.Drops || st.Drops != 2 || st.Packets != 2 {
		t.Errorf("stats %+v, before the second offer %+v", st, before)
	}
	if got := f.receive(0); len(got) != 2 || !bytes.Equal(got[1], frame(400, 3)) {
		t.Fatalf("received %d frames", len(got))
	}
	// The previous Deliver keeps its contract: frames not placed are drops.
	if n, _ := ts.dev.Deliver(0, frames[1:2]); n != 0 {
		t.Fatal("delivered without buffers")
	}
	if st := ts.dev.Stats()[0]; st.Drops != 3 {
		t.Errorf("Deliver without buffers: drops %d, want 3", st.Drops)
	}
}

func TestDeviceRXLegacyHeader(t *testing.T) {
	ts := startServer(t, NetConfig{})
	f := dial(t, ts.path)
	f.setup(setupOpts{features: FeatureRingEventIdx | FeatureProtocolFeatures})
	if f.hdr != 10 {
		t.Fatal("test setup: expected a 10-byte header")
	}
	f.postRX(0, 1, 2048)
	if n, _ := ts.dev.Deliver(0, [][]byte{frame(64, 5)}); n != 1 {
		t.Fatal("not delivered")
	}
	if got := f.receive(0); len(got) != 1 || !bytes.Equal(got[0], frame(64, 5)) {
		t.Fatal("frame corrupted with a 10-byte header")
	}
}

func TestDeviceTX(t *testing.T) {
	sink := newTXSink()
	ts := startServer(t, NetConfig{TX: sink.handler, TXBatch: 8})
	f := dial(t, ts.path)
	f.setup(setupOpts{})
	var want [][]byte
	for segs := 1; segs <= 3; segs++ {
		var fs [][]byte
		for i := range 5 {
			fs = append(fs, frame(60+i*300, byte(segs*10+i)))
		}
		want = append(want, fs...)
		f.transmit(1, segs, fs...)
	}
	var got [][]byte
	for _, b := range sink.collect(t, len(want)) {
		if b.pair != 0 {
			t.Errorf("TX handler called for pair %d", b.pair)
		}
		if len(b.frames) > 8 {
			t.Errorf("batch of %d frames exceeds TXBatch 8", len(b.frames))
		}
		got = append(got, b.frames...)
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("frame %d: got %d bytes, want %d", i, len(got[i]), len(want[i]))
		}
	}
	waitFor(t, "used entries", func() bool { return f.rings[1].usedIdx() == 15 })
	for _, u := range f.rings[1].takeUsed() {
		if u.len != 0 {
			t.Errorf("TX used entry %+v: device wrote nothing, want len 0", u)
		}
	}
	if c := readEvent(f.call[1]); c == 0 {
		t.Error("no interrupt for TX completions")
	}
	st := ts.dev.Stats()[1]
	if st.Packets != 15 || st.Drops != 0 || st.Kicks == 0 {
		t.Errorf("stats %+v", st)
	}
	// A chain too short for the header is dropped but returned.
	r := f.rings[1]
	d := f.next[1] % r.size
	f.next[1]++
	r.setDesc(int(d), f.buf(1, d), 4, 0, 0)
	r.offer(d)
	unix.Write(f.kick[1], eventOne[:])
	waitFor(t, "short chain returned", func() bool { return r.usedIdx() == 16 })
	if st := ts.dev.Stats()[1]; st.Drops != 1 {
		t.Errorf("short chain: stats %+v", st)
	}
}

func TestDeviceTXBusyPoll(t *testing.T) {
	sink := newTXSink()
	ts := startServer(t, NetConfig{TX: sink.handler, BusyPoll: 50 * time.Millisecond})
	f := dial(t, ts.path)
	f.setup(setupOpts{})
	f.transmit(1, 1, frame(100, 1))
	sink.collect(t, 1)
	// Within the busy-poll window, frames are picked up without a kick.
	r := f.rings[1]
	d := f.next[1] % r.size
	f.next[1]++
	pkt := append(make([]byte, 12), frame(80, 2)...)
	copy(f.g.at(f.buf(1, d), uint64(len(pkt))), pkt)
	r.setDesc(int(d), f.buf(1, d), uint32(len(pkt)), 0, 0)
	r.offer(d)
	got := sink.collect(t, 1)
	if !bytes.Equal(got[0].frames[0], frame(80, 2)) {
		t.Fatal("frame corrupted")
	}
}

func TestDeviceMultiqueue(t *testing.T) {
	sink := newTXSink()
	ts := startServer(t, NetConfig{QueuePairs: 2, TX: sink.handler})
	f := dial(t, ts.path)
	f.setup(setupOpts{pairs: 2})
	if ts.dev.AckedFeatures()&FeatureNetMQ == 0 {
		t.Fatal("MQ not negotiated")
	}
	f.postRX(2, 4, 2048)
	if n, err := ts.dev.Deliver(1, [][]byte{frame(300, 1)}); n != 1 || err != nil {
		t.Fatalf("Deliver on pair 1 = %d, %v", n, err)
	}
	if got := f.receive(2); len(got) != 1 {
		t.Fatal("frame not on RX queue 2")
	}
	if n, _ := ts.dev.Deliver(0, [][]byte{frame(300, 1)}); n != 0 {
		t.Fatal("pair 0 delivered without buffers")
	}
	f.transmit(3, 2, frame(70, 3))
	if b := sink.collect(t, 1); b[0].pair != 1 {
		t.Fatalf("TX on queue 3 reported as pair %d", b[0].pair)
	}
}

func TestDeviceWithoutProtocolFeatures(t *testing.T) {
	ts := startServer(t, NetConfig{})
	f := dial(t, ts.path)
	f.setup(setupOpts{noProto: true})
	// Rings start enabled when VHOST_USER_F_PROTOCOL_FEATURES is not acked.
	waitFor(t, "ready", func() bool { return ts.dev.Ready(0) })
	f.postRX(0, 1, 2048)
	if n, err := ts.dev.Deliver(0, [][]byte{frame(64, 1)}); n != 1 || err != nil {
		t.Fatalf("Deliver = %d, %v", n, err)
	}
}

func TestDeviceGetVringBaseStops(t *testing.T) {
	ts := startServer(t, NetConfig{})
	f := dial(t, ts.path)
	f.setup(setupOpts{})
	f.postRX(0, 5, 2048)
	ts.dev.Deliver(0, [][]byte{frame(64, 1), frame(64, 2), frame(64, 3)})
	if err := f.send(ReqGetVringBase, FlagVersion, state(0, 0)); err != nil {
		t.Fatal(err)
	}
	h, p, err := f.recv()
	if err != nil || h.Request != ReqGetVringBase || len(p) != 8 {
		t.Fatalf("reply %+v %x %v", h, p, err)
	}
	if idx, base := binary.LittleEndian.Uint32(p), binary.LittleEndian.Uint32(p[4:]); idx != 0 || base != 3 {
		t.Fatalf("GET_VRING_BASE = queue %d base %d, want queue 0 base 3", idx, base)
	}
	if _, err := ts.dev.Deliver(0, [][]byte{frame(64, 4)}); !errors.Is(err, ErrNotReady) {
		t.Fatalf("Deliver on a stopped ring: %v", err)
	}
	// Restart from the reported base: the two remaining buffers are used.
	f.kick[0] = eventfd(t)
	f.mustAck(ReqSetVringBase, state(0, 3))
	f.mustAck(ReqSetVringKick, u64(0), f.kick[0])
	if n, _ := ts.dev.Deliver(0, [][]byte{frame(64, 4), frame(64, 5), frame(64, 6)}); n != 2 {
		t.Fatalf("after restart delivered %d, want 2", n)
	}
}

func TestDeviceBrokenQueue(t *testing.T) {
	sink := newTXSink()
	ts := startServer(t, NetConfig{TX: sink.handler})
	f := dial(t, ts.path)
	f.setup(setupOpts{})
	r := f.rings[1]
	r.setDesc(0, f.buf(1, 0), 64, descFNext, 1)
	r.setDesc(1, f.buf(1, 1), 64, descFNext, 0)
	r.offer(0)
	unix.Write(f.kick[1], eventOne[:])
	waitFor(t, "queue reported broken", func() bool { return ts.dev.Stats()[1].Broken == 1 })
	if readEvent(f.errfd[1]) == 0 {
		t.Error("error eventfd not written")
	}
	if ts.dev.Ready(0) {
		t.Error("pair with a broken queue reported ready")
	}
	// RX of the same pair still works.
	f.postRX(0, 1, 2048)
	if n, _ := ts.dev.Deliver(0, [][]byte{frame(64, 1)}); n != 1 {
		t.Error("RX stopped with TX broken")
	}
	// A broken RX ring: a buffer outside memory.
	f.rings[0].setDesc(5, 0x10, 2048, descFWrite, 0)
	f.rings[0].offer(5)
	if _, err := ts.dev.Deliver(0, [][]byte{frame(64, 1)}); !errors.Is(err, ErrQueueBroken) {
		t.Fatalf("Deliver into a broken ring: %v", err)
	}
}

// TestServerReconnectNoLeaks: a disconnect drops every fd, mapping and
// goroutine of the connection, and the next front-end is served.
func TestServerReconnectNoLeaks(t *testing.T) {
	sink := newTXSink()
	ts := startServer(t, NetConfig{QueuePairs: 2, TX: sink.handler})
	time.Sleep(10 * time.Millisecond)
	fds0, maps0, gor0 := countFDs(t), countMaps(t, "guest0"), runtime.NumGoroutine()
	for round := range 3 {
		f := dial(t, ts.path)
		f.setup(setupOpts{pairs: 2})
		f.postRX(0, 4, 2048)
		if n, _ := ts.dev.Deliver(0, [][]byte{frame(64, byte(round))}); n != 1 {
			t.Fatalf("round %d: not delivered", round)
		}
		f.transmit(1, 1, frame(64, 1))
		sink.collect(t, 1)
		if countMaps(t, "guest0") <= maps0 {
			t.Fatal("guest memory not mapped by the server?")
		}
		f.close()
		f.g.release()
		waitFor(t, "teardown", func() bool { return !ts.dev.Ready(0) })
		waitFor(t, "fds released", func() bool { return countFDs(t) <= fds0 })
		waitFor(t, "mappings released", func() bool { return countMaps(t, "guest0") <= maps0 })
		goroutinesSettle(t, gor0)
		if n, err := ts.dev.Deliver(0, [][]byte{frame(64, 1)}); n != 0 || !errors.Is(err, ErrNotReady) {
			t.Fatalf("Deliver after disconnect = %d, %v", n, err)
		}
	}
}

// A second front-end on a socket that serves one is closed (after the
// grace a reconnecting front-end gets), not left unanswered in the listen
// backlog, which would hang a QEMU in netdev_add; the first keeps working,
// and once it leaves the next one is served.
func TestServerSecondFrontEnd(t *testing.T) {
	ts := startServer(t, NetConfig{})
	f := dial(t, ts.path)
	f.setup(setupOpts{})
	if !ts.srv.Connected() {
		t.Fatal("Connected() false with a front-end set up")
	}
	second, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: ts.path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	start := time.Now()
	second.SetReadDeadline(start.Add(secondFrontEndGrace + 5*time.Second))
	if n, err := second.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("second front-end: read %d, %v; want EOF (closed by the server)", n, err)
	}
	if d := time.Since(start); d < secondFrontEndGrace/2 {
		t.Errorf("second front-end closed after %v, before the grace of %v", d, secondFrontEndGrace)
	}
	f.postRX(0, 1, 2048)
	if n, _ := ts.dev.Deliver(0, [][]byte{frame(64, 1)}); n != 1 {
		t.Fatal("the first front-end stopped working")
	}
	// The first leaves; a front-end that connects at once is served.
	f.close()
	f.g.release()
	f2 := dial(t, ts.path)
	f2.setup(setupOpts{})
	f2.postRX(0, 1, 2048)
	if n, _ := ts.dev.Deliver(0, [][]byte{frame(64, 2)}); n != 1 {
		t.Fatal("the next front-end is not served")
	}
	f2.close()
	f2.g.release()
	waitFor(t, "disconnect seen", func() bool { return !ts.srv.Connected() })
}

func TestServerMalformed(t *testing.T) {
	ts := startServer(t, NetConfig{})
	le := binary.LittleEndian
	raw := func(req Request, flags, size uint32, payload []byte) []byte {
		b := le.AppendUint32(nil, uint32(req))
		b = le.AppendUint32(b, flags)
		b = le.AppendUint32(b, size)
		return append(b, payload...)
	}
	tests := []struct {
		name string
		msg  []byte
		fds  int
	}{
		{"unknown request", raw(99, 1, 0, nil), 0},
		{"log base not offered", raw(ReqSetLogBase, 1, 16, make([]byte, 16)), 1},
		{"bad version", raw(ReqGetFeatures, 2, 0, nil), 0},
		{"reply flag", raw(ReqGetFeatures, 1|FlagReply, 0, nil), 0},
		{"payload too large", raw(ReqSetFeatures, 1, 1<<20, nil), 0},
		{"short payload", raw(ReqSetFeatures, 1, 4, make([]byte, 4)), 0},
		{"unexpected fd", raw(ReqSetFeatures, 1, 8, make([]byte, 8)), 1},
		{"call without fd", raw(ReqSetVringCall, 1, 8, make([]byte, 8)), 0},
		{"call with two fds", raw(ReqSetVringCall, 1, 8, make([]byte, 8)), 2},
		{"mem table fd mismatch", raw(ReqSetMemTable, 1, 40, append(le.AppendUint32(nil, 1), make([]byte, 36)...)), 2},
		{"too many fds", raw(ReqSetVringKick, 1, 8, make([]byte, 8)), MaxFDs + 3},
		{"vring index out of range", raw(ReqSetVringNum, 1, 8, state(7, 256)), 0},
		{"features not offered", raw(ReqSetFeatures, 1, 8, u64(1<<0)), 0},
	}
	fds0 := countFDs(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := dial(t, ts.path)
			var fds []int
			for range tt.fds {
				fds = append(fds, eventfd(t))
			}
			var oob []byte
			if len(fds) > 0 {
				oob = unix.UnixRights(fds...)
			}
			if _, _, err := f.c.WriteMsgUnix(tt.msg, oob, nil); err != nil {
				t.Fatal(err)
			}
			closeFDs(fds)
			f.expectClosed()
			f.close()
		})
	}
	waitFor(t, "passed fds closed by the server", func() bool { return countFDs(t) <= fds0 })
	// The server still serves.
	f := dial(t, ts.path)
	f.setup(setupOpts{})
}

func TestServerReplyAckFailure(t *testing.T) {
	ts := startServer(t, NetConfig{})
	f := dial(t, ts.path)
	f.setup(setupOpts{})
	for _, tc := range []struct {
		req     Request
		payload []byte
	}{
		{ReqSetFeatures, u64(1 << 0)},
		{ReqSetVringNum, state(0, 3)},
		{ReqSetVringNum, state(5, 256)},
		{ReqSetVringBase, state(0, 1)}, // ring running
		{ReqSetVringEnable, state(0, 2)},
		{ReqSetProtocolFeatures, u64(1 << 15)},
	} {
		if v := f.do(tc.req, tc.payload); v == 0 {
			t.Errorf("%v %x acked", tc.req, tc.payload)
		}
	}
	// Bad memory table: region larger than its fd.
	g := newGuestMem(t, 4096)
	regions := g.layout()
	regions[0].Size = 1 << 20
	memfds := g.dupFDs(t)
	defer closeFDs(memfds)
	if v := f.do(ReqSetMemTable, memTablePayload(regions), memfds...); v == 0 {
		t.Error("memory table beyond the end of its file acked")
	}
	// The connection and the rings survived.
	f.postRX(0, 1, 2048)
	if n, _ := ts.dev.Deliver(0, [][]byte{frame(64, 1)}); n != 1 {
		t.Error("device stopped working after refused requests")
	}
}

// TestServerMemTableReplace: a new memory table while rings run moves the
// rings into it and unmaps the old one.
func TestServerMemTableReplace(t *testing.T) {
	ts := startServer(t, NetConfig{})
	f := dial(t, ts.path)
	f.setup(setupOpts{})
	maps := countMaps(t, "guest0")
	memfds := f.g.dupFDs(t)
	defer closeFDs(memfds)
	f.mustAck(ReqSetMemTable, memTablePayload(f.g.layout()), memfds...)
	if got := countMaps(t, "guest0"); got != maps {
		t.Errorf("mappings %d after replacing the table, want %d", got, maps)
	}
	f.postRX(0, 1, 2048)
	if n, _ := ts.dev.Deliver(0, [][]byte{frame(64, 1)}); n != 1 {
		t.Fatal("not delivered after table replacement")
	}
	if got := f.receive(0); len(got) != 1 || !bytes.Equal(got[0], frame(64, 1)) {
		t.Fatal("frame lost after table replacement")
	}
}

func BenchmarkDeliver(b *testing.B) { benchDeliver(b, false) }

// BenchmarkDeliverLogging: the same with dirty page logging on (while a VM
// migrates).
func BenchmarkDeliverLogging(b *testing.B) { benchDeliver(b, true) }

func benchDeliver(b *testing.B, logging bool) {
	ts := startServer(b, NetConfig{})
	f := dial(b, ts.path)
	f.setup(setupOpts{size: 1024})
	if logging {
		f.startLogging()
	}
	frames := make([][]byte, 32)
	for i := range frames {
		frames[i] = frame(1400, byte(i))
	}
	r := f.rings[0]
	for i := range 1024 {
		r.setDesc(i, f.buf(0, uint16(i)), bufSize, descFWrite, 0)
	}
	r.setUsedEvent(0xffff)
	heads := make([]uint16, 32)
	b.ReportAllocs()
	b.SetBytes(32 * 1400)
	for i := 0; b.Loop(); i++ {
		for j := range heads {
			heads[j] = uint16((i*32 + j) % 1024)
		}
		r.offer(heads...)
		if n, err := ts.dev.Deliver(0, frames); n != 32 {
			b.Fatal(n, err)
		}
		r.lastUsed = r.usedIdx()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*32), "ns/pkt")
}
