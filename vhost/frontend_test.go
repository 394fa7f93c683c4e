package vhost

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A fake front-end playing QEMU: it shares memfd guest memory, sets up the
// rings through the real protocol over a unix socket and acts as the guest's
// virtio-net driver.

type testServer struct {
	dev  *NetDevice
	srv  *Server
	path string
}

func startServer(t testing.TB, cfg NetConfig) *testServer {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	dev, err := NewNetDevice(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "vhost.sock")
	srv, err := NewServer(path, dev, cfg.Logger)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return")
		}
	})
	return &testServer{dev: dev, srv: srv, path: path}
}

type frontend struct {
	t     testing.TB
	c     *net.UnixConn
	g     *guestMem
	rings []*guestRing
	kick  []int
	call  []int
	errfd []int
	bufs  []uint64 // per queue: GPA of size*bufSize bytes of buffers
	next  []uint16 // per queue: next descriptor to use
	hdr   int
}

const bufSize = 2048

func dial(t testing.TB, path string) *frontend {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	f := &frontend{t: t, c: c, hdr: 12}
	t.Cleanup(f.close)
	return f
}

func (f *frontend) close() {
	if f.c != nil {
		f.c.Close()
		f.c = nil
	}
	for _, l := range [][]int{f.kick, f.call, f.errfd} {
		closeFDs(l)
	}
	f.kick, f.call, f.errfd = nil, nil, nil
}

func (f *frontend) send(req Request, flags uint32, payload []byte, fds ...int) error {
	b := binary.LittleEndian.AppendUint32(nil, uint32(req))
	b = binary.LittleEndian.AppendUint32(b, flags)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
	b = append(b, payload...)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	f.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _, err := f.c.WriteMsgUnix(b, oob, nil)
	return err
}

func (f *frontend) recv() (Header, []byte, error) {
	f.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var hb [HeaderSize]byte
	if _, err := readFull(f.c, hb[:]); err != nil {
		return Header{}, nil, err
	}
	h := Header{
		Request: Request(binary.LittleEndian.Uint32(hb[0:])),
		Flags:   binary.LittleEndian.Uint32(hb[4:]),
		Size:    binary.LittleEndian.Uint32(hb[8:]),
	}
	p := make([]byte, h.Size)
	if _, err := readFull(f.c, p); err != nil {
		return h, nil, err
	}
	return h, p, nil
}

func readFull(c *net.UnixConn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// do sends a request and returns its reply payload: the request's own reply
// for GET_* requests, else the REPLY_ACK value (NEED_REPLY is set).
func (f *frontend) do(req Request, payload []byte, fds ...int) uint64 {
	f.t.Helper()
	flags := uint32(FlagVersion)
	get := req == ReqGetFeatures || req == ReqGetProtocolFeatures || req == ReqGetQueueNum || req == ReqGetVringBase
	if !get {
		flags |= FlagNeedReply
	}
	if err := f.send(req, flags, payload, fds...); err != nil {
		f.t.Fatalf("%v: send: %v", req, err)
	}
	h, p, err := f.recv()
	if err != nil {
		f.t.Fatalf("%v: reply: %v", req, err)
	}
	if h.Request != req || h.Flags != FlagVersion|FlagReply {
		f.t.Fatalf("%v: reply header %+v", req, h)
	}
	switch len(p) {
	case 8:
		return binary.LittleEndian.Uint64(p)
	}
	f.t.Fatalf("%v: reply of %d bytes", req, len(p))
	return 0
}

// mustAck sends a request with NEED_REPLY and fails unless acked with 0.
// The fds stay the caller's.
func (f *frontend) mustAck(req Request, payload []byte, fds ...int) {
	f.t.Helper()
	if v := f.do(req, payload, fds...); v != 0 {
		f.t.Fatalf("%v: failure ack %d", req, v)
	}
}

func u64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func state(idx, num uint32) []byte {
	return binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, idx), num)
}

func memTablePayload(regions []MemoryRegion) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(regions)))
	b = binary.LittleEndian.AppendUint32(b, 0)
	for _, r := range regions {
		for _, v := range []uint64{r.GuestPhysAddr, r.Size, r.UserAddr, r.MmapOffset} {
			b = binary.LittleEndian.AppendUint64(b, v)
		}
	}
	return b
}

func eventfd(t testing.TB) int {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

// readEvent returns and resets an eventfd's counter.
func readEvent(fd int) uint64 {
	var b [8]byte
	if n, err := unix.Read(fd, b[:]); err != nil || n != 8 {
		return 0
	}
	return binary.LittleEndian.Uint64(b[:])
}

type setupOpts struct {
	features uint64 // 0: everything offered but MQ unless pairs > 1
	noProto  bool   // do not negotiate protocol features
	pairs    int
	size     uint16
	mem      backing // nil: memfdBacking
}

// setup performs QEMU's handshake and starts every queue.
func (f *frontend) setup(o setupOpts) {
	t := f.t
	t.Helper()
	if o.pairs == 0 {
		o.pairs = 1
	}
	if o.size == 0 {
		o.size = 256
	}
	offered := f.do(ReqGetFeatures, nil)
	if err := f.send(ReqSetOwner, FlagVersion, nil); err != nil {
		t.Fatal(err)
	}
	features := o.features
	if features == 0 {
		features = offered &^ FeatureLogAll // as QEMU: logging only while migrating
	}
	if o.noProto {
		features &^= FeatureProtocolFeatures
	} else {
		pf := f.do(ReqGetProtocolFeatures, nil)
		if pf&ProtocolFeatureReplyAck == 0 {
			t.Fatal("REPLY_ACK not offered")
		}
		if err := f.send(ReqSetProtocolFeatures, FlagVersion, u64(ProtocolFeatureMQ|ProtocolFeatureReplyAck)); err != nil {
			t.Fatal(err)
		}
		if n := f.do(ReqGetQueueNum, nil); int(n) < o.pairs {
			t.Fatalf("GET_QUEUE_NUM %d < %d pairs", n, o.pairs)
		}
	}
	ack := func(req Request, payload []byte, fds ...int) {
		t.Helper()
		if o.noProto {
			if err := f.send(req, FlagVersion, payload, fds...); err != nil {
				t.Fatal(err)
			}
			return
		}
		f.mustAck(req, payload, fds...)
	}
	ack(ReqSetFeatures, u64(features))
	if features&(FeatureVersion1|FeatureNetMrgRxbuf) == 0 {
		f.hdr = 10
	}
	n := uint64(o.size)
	total := uint64(2*o.pairs)*(16*n+6+2*n+6+8*n+4096+n*bufSize) + 1<<20
	if o.mem == nil {
		o.mem = memfdBacking
	}
	f.g = newGuestMemOn(t, o.mem, total)
	memfds := f.g.dupFDs(t)
	ack(ReqSetMemTable, memTablePayload(f.g.layout()), memfds...)
	closeFDs(memfds)
	for i := range 2 * o.pairs {
		r := newGuestRing(f.g, o.size)
		f.rings = append(f.rings, r)
		f.bufs = append(f.bufs, f.g.alloc(n*bufSize, 4096))
		f.next = append(f.next, 0)
		f.kick = append(f.kick, eventfd(t))
		f.call = append(f.call, eventfd(t))
		f.errfd = append(f.errfd, eventfd(t))
		idx := uint32(i)
		ack(ReqSetVringNum, state(idx, uint32(o.size)))
		ack(ReqSetVringBase, state(idx, 0))
		addr := binary.LittleEndian.AppendUint32(nil, idx)
		addr = binary.LittleEndian.AppendUint32(addr, 0)
		for _, a := range []uint64{f.g.uva(r.desc), f.g.uva(r.used), f.g.uva(r.avail), 0} {
			addr = binary.LittleEndian.AppendUint64(addr, a)
		}
		ack(ReqSetVringAddr, addr)
		ack(ReqSetVringKick, u64(uint64(idx)), f.kick[i])
		ack(ReqSetVringCall, u64(uint64(idx)), f.call[i])
		ack(ReqSetVringErr, u64(uint64(idx)), f.errfd[i])
		if !o.noProto {
			ack(ReqSetVringEnable, state(idx, 1))
		}
	}
}

// buf returns the GPA of descriptor d's buffer in queue q.
func (f *frontend) buf(q int, d uint16) uint64 {
	return f.bufs[q] + uint64(d)*bufSize
}

// postRX makes n device-writable buffers of size bytes available on RX
// queue q.
func (f *frontend) postRX(q, n int, size uint32) {
	r := f.rings[q]
	heads := make([]uint16, n)
	for i := range heads {
		d := f.next[q] % r.size
		f.next[q]++
		r.setDesc(int(d), f.buf(q, d), size, descFWrite, 0)
		heads[i] = d
	}
	r.offer(heads...)
}

// receive reassembles the frames the device published on RX queue q,
// checking the virtio-net header.
func (f *frontend) receive(q int) [][]byte {
	f.t.Helper()
	var frames [][]byte
	used := f.rings[q].takeUsed()
	for i := 0; i < len(used); {
		u := used[i]
		b := f.g.at(f.buf(q, uint16(u.id)), uint64(u.len))
		if len(b) < f.hdr {
			f.t.Fatalf("used entry %+v shorter than the header", u)
		}
		hdr := b[:f.hdr]
		for _, x := range hdr[:10] {
			if x != 0 {
				f.t.Fatalf("header %x: want zero offload fields", hdr)
			}
		}
		nb := 1
		if f.hdr == 12 {
			nb = int(binary.LittleEndian.Uint16(hdr[10:]))
		}
		if nb < 1 || i+nb > len(used) {
			f.t.Fatalf("num_buffers %d with %d used entries left", nb, len(used)-i)
		}
		frame := append([]byte(nil), b[f.hdr:]...)
		for _, u := range used[i+1 : i+nb] {
			frame = append(frame, f.g.at(f.buf(q, uint16(u.id)), uint64(u.len))...)
		}
		frames = append(frames, frame)
		i += nb
	}
	return frames
}

// transmit puts frames on TX queue q, with the header and data laid out in
// segs descriptors (1: header and data together; 2: header apart; 3: the
// data split too), and kicks.
func (f *frontend) transmit(q int, segs int, frames ...[]byte) {
	r := f.rings[q]
	var heads []uint16
	for _, fr := range frames {
		pkt := append(make([]byte, f.hdr), fr...)
		var parts [][]byte
		switch segs {
		case 1:
			parts = [][]byte{pkt}
		case 2:
			parts = [][]byte{pkt[:f.hdr], pkt[f.hdr:]}
		default:
			mid := f.hdr + len(fr)/2
			parts = [][]byte{pkt[:f.hdr-2], pkt[f.hdr-2 : mid], pkt[mid:]}
		}
		var ds []uint16
		for range parts {
			ds = append(ds, f.next[q]%r.size)
			f.next[q]++
		}
		for j, p := range parts {
			a := f.buf(q, ds[j])
			copy(f.g.at(a, uint64(len(p))), p)
			flags, next := uint16(0), uint16(0)
			if j+1 < len(parts) {
				flags, next = descFNext, ds[j+1]
			}
			r.setDesc(int(ds[j]), a, uint32(len(p)), flags, next)
		}
		heads = append(heads, ds[0])
	}
	r.offer(heads...)
	unix.Write(f.kick[q], eventOne[:])
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// expectClosed waits for the server to close the connection.
func (f *frontend) expectClosed() {
	f.t.Helper()
	f.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [64]byte
	for {
		_, err := f.c.Read(b[:])
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			f.t.Fatal("server did not close the connection")
		}
		return
	}
}

type txSink struct {
	ch chan txBatch
}

type txBatch struct {
	pair   int
	frames [][]byte
}

func newTXSink() *txSink { return &txSink{ch: make(chan txBatch, 1024)} }

func (s *txSink) handler(pair int, frames [][]byte) {
	b := txBatch{pair: pair}
	for _, f := range frames {
		b.frames = append(b.frames, append([]byte(nil), f...))
	}
	s.ch <- b
}

func (s *txSink) collect(t testing.TB, n int) []txBatch {
	t.Helper()
	var out []txBatch
	got := 0
	timeout := time.After(5 * time.Second)
	for got < n {
		select {
		case b := <-s.ch:
			out = append(out, b)
			got += len(b.frames)
		case <-timeout:
			t.Fatalf("received %d of %d TX frames", got, n)
		}
	}
	return out
}

func frame(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func goroutinesSettle(t testing.TB, want int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("goroutines to return to %d", want), func() bool {
		return runtime.NumGoroutine() <= want
	})
}
