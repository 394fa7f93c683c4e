package vhost

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Dirty page logging, checked against the guest memory itself: the test
// takes a copy of guest memory after its own (driver) writes, lets the
// back-end work, and requires every byte that changed to lie in a page
// marked in the log, and every marked page to be one the back-end wrote.
// On the old code SET_LOG_BASE closes the connection.

// testLog is the front-end's side of the dirty log: a memfd of off+size
// bytes, the bitmap starting at off.
type testLog struct {
	fd        int
	mem       []byte
	off, size uint64
}

func newTestLog(t testing.TB, name string, off, size uint64, flags int) *testLog {
	t.Helper()
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|flags)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Ftruncate(fd, int64(off+size)); err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(fd, 0, int(off+size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	l := &testLog{fd: fd, mem: mem, off: off, size: size}
	t.Cleanup(func() {
		unix.Munmap(l.mem)
		unix.Close(l.fd)
	})
	return l
}

func (l *testLog) marked(gpa uint64) bool {
	p := gpa / LogPageSize
	return l.mem[l.off+p/8]&(1<<(p%8)) != 0
}

// pages returns the marked pages' GPAs.
func (l *testLog) pages() []uint64 {
	var out []uint64
	for i, b := range l.mem[l.off:] {
		for bit := range 8 {
			if b&(1<<bit) != 0 {
				out = append(out, (uint64(i)*8+uint64(bit))*LogPageSize)
			}
		}
	}
	return out
}

func (l *testLog) reset() { clear(l.mem) }

// guestEnd is the end of the guest-physical memory of g.
func guestEnd(g *guestMem) uint64 {
	r := g.regions[len(g.regions)-1]
	return r.GuestPhysAddr + r.Size
}

// snapshot copies every region of guest memory.
func snapshot(g *guestMem) [][]byte {
	var out [][]byte
	for _, r := range g.regions {
		out = append(out, bytes.Clone(r.buf))
	}
	return out
}

// changedPages returns the pages (GPAs) where guest memory differs from
// snap.
func changedPages(g *guestMem, snap [][]byte) []uint64 {
	var out []uint64
	for i, r := range g.regions {
		for j := range r.buf {
			if r.buf[j] != snap[i][j] {
				p := (r.GuestPhysAddr + uint64(j)) &^ (LogPageSize - 1)
				if len(out) == 0 || out[len(out)-1] != p {
					out = append(out, p)
				}
			}
		}
	}
	return out
}

// checkLogged fails unless every changed page is marked and every marked
// page changed or is one of also (the used rings, marked whole).
func checkLogged(t *testing.T, what string, l *testLog, changed []uint64, also ...uint64) {
	t.Helper()
	if len(changed) == 0 {
		t.Fatalf("%s: the back-end wrote nothing (test bug)", what)
	}
	var unmarked []string
	for _, p := range changed {
		if !l.marked(p) {
			unmarked = append(unmarked, fmt.Sprintf("%#x", p))
		}
	}
	if len(unmarked) > 0 {
		t.Errorf("%s: pages written but not marked in the dirty log: %s", what, strings.Join(unmarked, " "))
	}
	for _, p := range l.pages() {
		if !slices.Contains(changed, p) && !slices.Contains(also, p) {
			t.Errorf("%s: page %#x marked but not written", what, p)
		}
	}
}

// usedPages returns the pages of ring r's used ring.
func usedPages(r *guestRing) []uint64 {
	var out []uint64
	for p := r.used &^ (LogPageSize - 1); p < r.used+usedRingLen(r.size); p += LogPageSize {
		out = append(out, p)
	}
	return out
}

func vringAddrPayload(idx, flags uint32, g *guestMem, r *guestRing, logAddr uint64) []byte {
	b := binary.LittleEndian.AppendUint32(nil, idx)
	b = binary.LittleEndian.AppendUint32(b, flags)
	for _, a := range []uint64{g.uva(r.desc), g.uva(r.used), g.uva(r.avail), logAddr} {
		b = binary.LittleEndian.AppendUint64(b, a)
	}
	return b
}

func logBasePayload(size, off uint64) []byte {
	return binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, size), off)
}

// setLogBase sends SET_LOG_BASE as QEMU does (no NEED_REPLY) and checks
// its reply: a header without payload.
func (f *frontend) setLogBase(l *testLog) {
	f.t.Helper()
	fd, err := unix.Dup(l.fd)
	if err != nil {
		f.t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := f.send(ReqSetLogBase, FlagVersion, logBasePayload(l.size, l.off), fd); err != nil {
		f.t.Fatal(err)
	}
	h, p, err := f.recv()
	if err != nil || h.Request != ReqSetLogBase || h.Flags != FlagVersion|FlagReply || len(p) != 0 {
		f.t.Fatalf("SET_LOG_BASE reply %+v %x %v", h, p, err)
	}
}

// setLogging turns logging on or off the way QEMU's vhost_dev_set_log
// does: SET_FEATURES with or without VHOST_F_LOG_ALL, then SET_VRING_ADDR
// of every ring with or without VHOST_VRING_F_LOG, the used ring logged at
// its guest-physical address.
func (f *frontend) setLogging(on bool) {
	f.t.Helper()
	features := f.do(ReqGetFeatures, nil) &^ FeatureLogAll
	flags := uint32(0)
	if on {
		features |= FeatureLogAll
		flags = VringFlagLog
	}
	f.mustAck(ReqSetFeatures, u64(features))
	for i, r := range f.rings {
		f.mustAck(ReqSetVringAddr, vringAddrPayload(uint32(i), flags, f.g, r, r.used))
	}
}

// startLogging shares a log covering guest memory (bitmap at an odd offset
// in its file, the file ending where the bitmap does) and turns logging
// on.
func (f *frontend) startLogging() *testLog {
	f.t.Helper()
	pf := f.do(ReqGetProtocolFeatures, nil)
	if pf&ProtocolFeatureLogShmfd == 0 || f.do(ReqGetFeatures, nil)&FeatureLogAll == 0 {
		f.t.Fatal("logging not offered")
	}
	f.mustAck(ReqSetProtocolFeatures, u64(ProtocolFeatureMQ|ProtocolFeatureReplyAck|ProtocolFeatureLogShmfd))
	l := newTestLog(f.t, "dirtylog", 5, logBytesFor(guestEnd(f.g)), 0)
	f.setLogBase(l)
	f.setLogging(true)
	return l
}

func TestDirtyLogMarksEveryWrite(t *testing.T) {
	sink := newTXSink()
	ts := startServer(t, NetConfig{TX: sink.handler})
	f := dial(t, ts.path)
	f.setup(setupOpts{size: 64})
	l := f.startLogging()
	rx, tx := f.rings[0], f.rings[1]

	// RX: single buffers, a frame merged over three, and a chain of two
	// buffers that straddle page boundaries.
	f.postRX(0, 8, bufSize)
	extra := f.g.alloc(8*LogPageSize, LogPageSize)
	d1, d2 := f.next[0]%rx.size, (f.next[0]+1)%rx.size
	f.next[0] += 2
	rx.setDesc(int(d1), extra+1000, 3000, descFWrite|descFNext, d2)
	rx.setDesc(int(d2), extra+3*LogPageSize+100, 9000, descFWrite, 0)
	rx.offer(d1)
	l.reset()
	snap := snapshot(f.g)
	frames := [][]byte{frame(60, 1), frame(1500, 2), frame(5000, 3), frame(64, 4), frame(2000, 5), frame(11000, 6)}
	if n, err := ts.dev.Deliver(0, frames); n != len(frames) {
		t.Fatalf("Deliver = %d, %v; want %d", n, err, len(frames))
	}
	// The kick goroutine may look at the TX ring meanwhile (the kick of
	// SET_VRING_KICK) and rewrite its avail_event: its used ring may be
	// marked too.
	rings := append(usedPages(rx), usedPages(tx)...)
	checkLogged(t, "RX", l, changedPages(f.g, snap), rings...)
	for _, p := range usedPages(rx) {
		if !l.marked(p) {
			t.Errorf("RX used ring page %#x not marked", p)
		}
	}
	if got := f.receive(0); len(got) != 6 || !slices.EqualFunc(got[:5], frames[:5], bytes.Equal) {
		t.Errorf("received %d frames, want the first 5 in the ring buffers (the sixth is in the chain)", len(got))
	}

	// TX: the back-end writes only the used ring (entries, idx,
	// avail_event). The guest's writes come before the snapshot, the kick
	// after.
	l.reset()
	kick := f.kick[1]
	f.kick[1] = eventfd(t)
	f.transmit(1, 2, frame(100, 7), frame(1400, 8))
	unix.Close(f.kick[1])
	f.kick[1] = kick
	snap = snapshot(f.g)
	unix.Write(kick, eventOne[:])
	sink.collect(t, 2)
	waitFor(t, "TX used entries published and logged", func() bool {
		return tx.usedIdx() == 2 && l.marked(tx.used)
	})
	// processTX marks the ring before it releases the device: once
	// GET_VRING_BASE of the TX ring answered, everything is logged.
	if err := f.send(ReqGetVringBase, FlagVersion, state(1, 0)); err != nil {
		t.Fatal(err)
	}
	if h, p, err := f.recv(); err != nil || h.Request != ReqGetVringBase || binary.LittleEndian.Uint32(p[4:]) != 2 {
		t.Fatalf("GET_VRING_BASE(1) reply %+v %x %v, want base 2", h, p, err)
	}
	checkLogged(t, "TX", l, changedPages(f.g, snap), rings...)
	if m := ts.dev.LogMissed(); m != 0 {
		t.Errorf("%d page writes not logged", m)
	}
}

// TestDirtyLogOff: with a log shared but VHOST_F_LOG_ALL not acked (before
// migration, or after it was cancelled) nothing is marked.
func TestDirtyLogOff(t *testing.T) {
	sink := newTXSink()
	ts := startServer(t, NetConfig{TX: sink.handler})
	f := dial(t, ts.path)
	f.setup(setupOpts{size: 64})
	l := f.startLogging()
	f.setLogging(false)
	l.reset()
	for round := range 2 {
		f.postRX(0, 4, bufSize)
		if n, _ := ts.dev.Deliver(0, [][]byte{frame(60, 1), frame(3000, 2)}); n != 2 {
			t.Fatalf("Deliver = %d", n)
		}
		f.transmit(1, 1, frame(100, 3))
		sink.collect(t, 1)
		waitFor(t, "TX used", func() bool { return f.rings[1].usedIdx() == uint16(round+1) })
		if p := l.pages(); len(p) != 0 {
			t.Fatalf("round %d: %d pages marked with logging off", round, len(p))
		}
		// On and off again, as a cancelled migration does.
		f.setLogging(true)
		f.setLogging(false)
		l.reset()
	}
}

// TestDirtyLogBaseHostile: logs that are too small, lie outside their
// file, come without an fd or do not cover a logged used ring are refused
// (a failed REPLY_ACK when asked for, else the connection is closed),
// nothing is left mapped, and the device goes on.
func TestDirtyLogBaseHostile(t *testing.T) {
	ts := startServer(t, NetConfig{})
	fds0 := countFDs(t)
	maps0 := countMaps(t, "hostilelog")
	f := dial(t, ts.path)
	f.setup(setupOpts{size: 64})
	f.mustAck(ReqSetProtocolFeatures, u64(ProtocolFeatureMQ|ProtocolFeatureReplyAck|ProtocolFeatureLogShmfd))
	need := logBytesFor(guestEnd(f.g))
	file := newTestLog(t, "hostilelog", 0, need+4096, 0)
	ev := eventfd(t)
	t.Cleanup(func() { unix.Close(ev) })
	cases := []struct {
		name      string
		size, off uint64
		fd        int // -1: none
	}{
		{"no fd", need, 0, -1},
		{"not a file", need, 0, ev},
		{"size 0", 0, 0, file.fd},
		{"too small for guest memory", need - 1, 0, file.fd},
		{"one byte", 1, 0, file.fd},
		{"offset beyond the file", need, need + 4096, file.fd},
		{"log beyond the end of the file", need, 4097, file.fd},
		{"huge size", 1 << 62, 0, file.fd},
		{"huge offset", need, 1 << 62, file.fd},
		{"offset and size overflow", math.MaxUint64, math.MaxUint64, file.fd},
	}
	for _, tc := range cases {
		var fds []int
		if tc.fd >= 0 {
			fds = []int{tc.fd}
		}
		// With NEED_REPLY: a failed ack, the connection stays.
		if v := f.do(ReqSetLogBase, logBasePayload(tc.size, tc.off), fds...); v == 0 {
			t.Errorf("%s: SET_LOG_BASE acked", tc.name)
		}
	}
	// A used ring logged beyond a (valid) log is refused as well.
	l := newTestLog(t, "hostilelog", 0, need, 0)
	f.setLogBase(l)
	if v := f.do(ReqSetVringAddr, vringAddrPayload(0, VringFlagLog, f.g, f.rings[0], 1<<40)); v == 0 {
		t.Error("SET_VRING_ADDR logging the used ring beyond the log acked")
	}
	if v := f.do(ReqSetVringAddr, vringAddrPayload(0, VringFlagLog, f.g, f.rings[0], math.MaxUint64-8)); v == 0 {
		t.Error("SET_VRING_ADDR logging the used ring at an overflowing address acked")
	}
	// Moving a running ring is refused; only the log flag may change.
	moved := vringAddrPayload(0, 0, f.g, f.rings[0], 0)
	binary.LittleEndian.PutUint64(moved[16:], f.g.uva(f.rings[0].used)+4096)
	if v := f.do(ReqSetVringAddr, moved); v == 0 {
		t.Error("SET_VRING_ADDR moving a running ring acked")
	}
	// The device still works, logging included.
	f.setLogging(true)
	f.postRX(0, 1, bufSize)
	if n, _ := ts.dev.Deliver(0, [][]byte{frame(64, 1)}); n != 1 {
		t.Fatal("device stopped working after refused logs")
	}
	if !l.marked(f.buf(0, 0)) {
		t.Error("RX buffer not marked after the refused logs")
	}
	// Without NEED_REPLY (as QEMU sends it) a refused log closes the
	// connection: QEMU waits for the reply.
	if err := f.send(ReqSetLogBase, FlagVersion, logBasePayload(1, 0), file.fd); err != nil {
		t.Fatal(err)
	}
	f.expectClosed()
	f.close()
	waitFor(t, "front-end state torn down", func() bool { return !ts.srv.Connected() })
	unix.Munmap(l.mem)
	l.mem = nil
	unix.Munmap(file.mem)
	file.mem = nil
	if n := countMaps(t, "hostilelog"); n != maps0 {
		t.Errorf("%d mappings of the logs left, want %d", n, maps0)
	}
	// The server takes the next front-end.
	f2 := dial(t, ts.path)
	f2.setup(setupOpts{size: 64})
	f2.close()
	// Left open: the test's two log files, its eventfd and the guest
	// memory of both front-ends.
	waitFor(t, "fds closed", func() bool { return countFDs(t) <= fds0+5 })
}

// TestDirtyLogShrunkFault: a front-end that shrinks the log's file (a memfd
// it did not seal) makes the next mark fault; that connection ends, the
// process goes on.
func TestDirtyLogShrunkFault(t *testing.T) {
	ts := startServer(t, NetConfig{})
	f := dial(t, ts.path)
	f.setup(setupOpts{size: 64})
	l := f.startLogging()
	unix.Munmap(l.mem)
	l.mem = nil
	if err := unix.Ftruncate(l.fd, 0); err != nil {
		t.Fatal(err)
	}
	f.postRX(0, 1, bufSize)
	if _, err := ts.dev.Deliver(0, [][]byte{frame(64, 1)}); err == nil {
		t.Fatal("Deliver into a shrunk log succeeded")
	}
	f.expectClosed()
	f.close()
	waitFor(t, "front-end state torn down", func() bool { return !ts.srv.Connected() })
	f2 := dial(t, ts.path)
	f2.setup(setupOpts{size: 64})
	f2.postRX(0, 1, bufSize)
	if n, _ := ts.dev.Deliver(0, [][]byte{frame(64, 1)}); n != 1 {
		t.Fatal("the next front-end is not served")
	}
}

// TestLogBatchBits: the bit arithmetic for any offset of the bitmap in its
// file, and pages beyond the log counted, never written.
func TestLogBatchBits(t *testing.T) {
	for _, off := range []uint64{0, 1, 3, 7, 8, 13} {
		size := uint64(3) // 24 pages
		l := newTestLog(t, "bits", off, size, 0)
		dl, err := newDirtyLog(LogBase{Size: size, Offset: off}, dupFD(t, l.fd))
		if err != nil {
			t.Fatal(err)
		}
		var b logBatch
		b.log = dl
		b.mark(0, 1)                   // page 0
		b.mark(7*LogPageSize+4095, 2)  // pages 7, 8
		b.mark(16*LogPageSize, 0)      // nothing
		b.mark(23*LogPageSize, 1)      // page 23, the last
		b.mark(22*LogPageSize, 3*4096) // 22, 23 and 24 (missed)
		b.mark(100*LogPageSize, 1)     // missed
		b.mark(math.MaxUint64-10, 100) // overflow: missed
		b.flush()
		want := []uint64{0, 7, 8, 22, 23}
		var got []uint64
		for _, p := range l.pages() {
			got = append(got, p/LogPageSize)
		}
		if !slices.Equal(got, want) {
			t.Errorf("offset %d: marked pages %v, want %v", off, got, want)
		}
		if b.missed != 3 {
			t.Errorf("offset %d: missed %d, want 3", off, b.missed)
		}
		for i := range off {
			if l.mem[i] != 0 {
				t.Errorf("offset %d: byte %d before the log written", off, i)
			}
		}
		dl.close()
	}
}

func dupFD(t testing.TB, fd int) int {
	t.Helper()
	d, err := unix.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestSendRARP: after a migration QEMU asks the back-end to announce a
// guest that cannot announce itself: a broadcast RARP from the guest's MAC
// reaches the TX handler (the VM's path out). A multicast MAC is refused.
func TestSendRARP(t *testing.T) {
	sink := newTXSink()
	ts := startServer(t, NetConfig{TX: sink.handler})
	f := dial(t, ts.path)
	f.setup(setupOpts{size: 64})
	if f.do(ReqGetProtocolFeatures, nil)&ProtocolFeatureRARP == 0 {
		t.Fatal("VHOST_USER_PROTOCOL_F_RARP not offered")
	}
	f.mustAck(ReqSetProtocolFeatures, u64(ProtocolFeatureMQ|ProtocolFeatureReplyAck|ProtocolFeatureRARP))
	mac := []byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	var v [8]byte
	copy(v[:], mac)
	f.mustAck(ReqSendRARP, v[:])
	b := sink.collect(t, 1)
	fr := b[0].frames[0]
	want := []byte{
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x80, 0x35, // Ethernet, RARP
		0, 1, 0x08, 0x00, 6, 4, 0, 3, // Ethernet/IPv4, reverse request
		0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0, 0, 0, 0, // sender
		0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0, 0, 0, 0, // target
	}
	if b[0].pair != 0 || len(fr) != 60 || !bytes.Equal(fr[:len(want)], want) || !bytes.Equal(fr[len(want):], make([]byte, 60-len(want))) {
		t.Errorf("RARP frame on pair %d:\n%x\nwant\n%x", b[0].pair, fr, want)
	}
	v[0] = 0x01 // multicast
	if f.do(ReqSendRARP, v[:]) == 0 {
		t.Error("SEND_RARP of a multicast MAC acked")
	}
	if f.do(ReqSendRARP, make([]byte, 8)) == 0 {
		t.Error("SEND_RARP of the zero MAC acked")
	}
}

// TestDirtyLogStopWhileDelivering: GET_VRING_BASE while frames stream into
// the guest with logging on answers only once every used entry taken is
// published and logged: the used index equals the base reported (single
// buffer frames), every page written is marked, and nothing is written
// after the reply.
func TestDirtyLogStopWhileDelivering(t *testing.T) {
	ts := startServer(t, NetConfig{})
	f := dial(t, ts.path)
	f.setup(setupOpts{size: 256})
	l := f.startLogging()
	rx := f.rings[0]
	f.postRX(0, 250, bufSize)
	l.reset()
	snap := snapshot(f.g)
	frames := [][]byte{frame(100, 1), frame(700, 2), frame(1400, 3)}
	done := make(chan error, 1)
	var placed atomic.Int64
	go func() {
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			n, err := ts.dev.Deliver(0, frames)
			placed.Add(int64(n))
			if err != nil {
				done <- err
				return
			}
		}
		done <- fmt.Errorf("Deliver never stopped")
	}()
	waitFor(t, "frames delivered", func() bool { return placed.Load() >= 30 })
	if err := f.send(ReqGetVringBase, FlagVersion, state(0, 0)); err != nil {
		t.Fatal(err)
	}
	h, p, err := f.recv()
	if err != nil || h.Request != ReqGetVringBase || len(p) != 8 {
		t.Fatalf("GET_VRING_BASE reply %+v %x %v", h, p, err)
	}
	base := uint16(binary.LittleEndian.Uint32(p[4:]))
	if used := rx.usedIdx(); used != base {
		t.Errorf("GET_VRING_BASE answered base %d with used idx %d published", base, used)
	}
	after := snapshot(f.g)
	if err := <-done; !errors.Is(err, ErrNotReady) {
		t.Errorf("Deliver after the stop: %v, want ErrNotReady", err)
	}
	t.Logf("stopped at base %d after %d frames", base, placed.Load())
	// The kick goroutine may rewrite the TX ring's avail_event (same value)
	// and mark its used ring, as in TestDirtyLogMarksEveryWrite.
	checkLogged(t, "stop", l, changedPages(f.g, snap), append(usedPages(rx), usedPages(f.rings[1])...)...)
	if c := changedPages(f.g, after); len(c) != 0 {
		t.Errorf("guest memory written after GET_VRING_BASE answered: pages %x", c)
	}
}
