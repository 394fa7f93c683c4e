// Package vhosttest is a fake vhost-user front-end for tests of packages
// that serve a vhost.NetDevice (vmport): it plays QEMU and the guest's
// virtio-net driver over a real unix socket, with one queue pair in guest
// memory it shares as a file, and it can misbehave the way a hostile
// front-end would (shrink that file under the back-end).
//
// Guest memory is one region: the RX and TX rings first, then RX and TX
// buffers (2048 bytes per descriptor), then a MiB of slack, so that every
// ring and buffer lies in the first MiB of the file, and the buffers that
// PostRXFar and TransmitAcross use reach beyond it.
package vhosttest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/vhost"
)

// BufSize is the size of each descriptor's buffer.
const BufSize = 2048

const (
	gpaBase = 0x100000
	uvaBase = 0x7f0000000000
	hdrLen  = 12 // virtio_net_hdr_v1 (VERSION_1 is negotiated)

	descFNext  = 1
	descFWrite = 2
)

// TB is what a FrontEnd needs of its user: a *testing.T or *testing.B, or
// a tool's own (the vhost benchmark's sink).
type TB interface {
	Helper()
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// Options configure a FrontEnd.
type Options struct {
	// Size is the number of descriptors per ring (default 64). Up to 128,
	// every ring and buffer lies in the first MiB of guest memory (see
	// PostRXFar, TransmitAcross); larger rings go beyond it.
	Size uint16
	// Memory makes the file behind guest memory, size bytes long, and
	// returns its fd. Nil: a memfd without MFD_ALLOW_SEALING (the
	// back-end cannot seal it; the front-end can shrink it).
	Memory func(size int64) (int, error)
}

// FrontEnd is a connected, set-up front-end. It is not safe for concurrent
// use.
type FrontEnd struct {
	tb   TB
	c    *net.UnixConn
	size uint16
	fd   int    // guest memory file
	mem  []byte // the front-end's mapping of it
	kick [2]int
	call [2]int
	errs [2]int

	desc, avail, used [2]uint64 // ring offsets in mem
	bufs              [2]uint64 // buffer offsets in mem
	far               uint64    // offset of the slack page beyond the first MiB
	next              [2]uint16 // next descriptor
	nextAvail         [2]uint16
	lastUsed          [2]uint16
}

// Dial connects to path and sets up one queue pair (every feature the
// back-end offers but MQ). Everything is released when tb ends.
func Dial(tb TB, path string, o Options) *FrontEnd {
	tb.Helper()
	if o.Size == 0 {
		o.Size = 64
	}
	if o.Memory == nil {
		o.Memory = func(size int64) (int, error) {
			fd, err := unix.MemfdCreate("vhosttest", unix.MFD_CLOEXEC)
			if err == nil {
				err = unix.Ftruncate(fd, size)
			}
			return fd, err
		}
	}
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		tb.Fatalf("vhosttest: dial %s: %v", path, err)
	}
	f := &FrontEnd{tb: tb, c: c, size: o.Size, fd: -1, kick: [2]int{-1, -1}, call: [2]int{-1, -1}, errs: [2]int{-1, -1}}
	tb.Cleanup(f.Close)
	n := uint64(o.Size)
	off := uint64(0)
	alloc := func(l, align uint64) uint64 {
		off = (off + align - 1) &^ (align - 1)
		a := off
		off += l
		return a
	}
	for q := range 2 {
		f.desc[q] = alloc(16*n, 16)
		f.avail[q] = alloc(6+2*n, 4)
		f.used[q] = alloc(6+8*n+2, 4)
	}
	for q := range 2 {
		f.bufs[q] = alloc(n*BufSize, 4096)
	}
	if o.Size <= 128 && off > 1<<20-4096 { // the page before the MiB stays free (TransmitAcross)
		tb.Fatalf("vhosttest: rings and buffers of %d descriptors do not fit in the first MiB", n)
	}
	f.far = alloc(4096, 1<<20)
	total := int64(off)
	if f.fd, err = o.Memory(total); err != nil {
		tb.Fatalf("vhosttest: guest memory: %v", err)
	}
	if f.mem, err = unix.Mmap(f.fd, 0, int(total), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		tb.Fatalf("vhosttest: mmap guest memory: %v", err)
	}
	f.handshake(uint64(total))
	return f
}

func (f *FrontEnd) handshake(total uint64) {
	tb := f.tb
	tb.Helper()
	offered := f.do(vhost.ReqGetFeatures, nil, true)
	f.send(vhost.ReqSetOwner, vhost.FlagVersion, nil)
	f.send(vhost.ReqSetProtocolFeatures, vhost.FlagVersion, u64(vhost.ProtocolFeatureReplyAck))
	f.ack(vhost.ReqSetFeatures, u64(offered&^(vhost.FeatureNetMQ|vhost.FeatureLogAll)))
	mt := binary.LittleEndian.AppendUint32(nil, 1)
	mt = binary.LittleEndian.AppendUint32(mt, 0)
	for _, v := range []uint64{gpaBase, total, uvaBase, 0} {
		mt = binary.LittleEndian.AppendUint64(mt, v)
	}
	f.ack(vhost.ReqSetMemTable, mt, f.fd)
	for q := range 2 {
		var err error
		for _, p := range []*int{&f.kick[q], &f.call[q], &f.errs[q]} {
			if *p, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
				tb.Fatalf("vhosttest: eventfd: %v", err)
			}
		}
		idx := uint32(q)
		f.ack(vhost.ReqSetVringNum, state(idx, uint32(f.size)))
		f.ack(vhost.ReqSetVringBase, state(idx, 0))
		addr := binary.LittleEndian.AppendUint32(nil, idx)
		addr = binary.LittleEndian.AppendUint32(addr, 0)
		for _, a := range []uint64{f.desc[q], f.used[q], f.avail[q], 0} {
			addr = binary.LittleEndian.AppendUint64(addr, uvaBase+a)
		}
		f.ack(vhost.ReqSetVringAddr, addr)
		f.ack(vhost.ReqSetVringKick, u64(uint64(idx)), f.kick[q])
		f.ack(vhost.ReqSetVringCall, u64(uint64(idx)), f.call[q])
		f.ack(vhost.ReqSetVringErr, u64(uint64(idx)), f.errs[q])
		f.ack(vhost.ReqSetVringEnable, state(idx, 1))
	}
}

func u64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func state(idx, num uint32) []byte {
	return binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, idx), num)
}

func (f *FrontEnd) send(req vhost.Request, flags uint32, payload []byte, fds ...int) {
	f.tb.Helper()
	b := vhost.EncodeHeader(nil, req, uint32(len(payload)))
	binary.LittleEndian.PutUint32(b[4:], flags)
	b = append(b, payload...)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	f.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := f.c.WriteMsgUnix(b, oob, nil); err != nil {
		f.tb.Fatalf("vhosttest: send %v: %v", req, err)
	}
}

// do sends a request and returns the 8-byte reply: the request's own reply
// (get) or its REPLY_ACK.
func (f *FrontEnd) do(req vhost.Request, payload []byte, get bool, fds ...int) uint64 {
	f.tb.Helper()
	flags := uint32(vhost.FlagVersion)
	if !get {
		flags |= vhost.FlagNeedReply
	}
	f.send(req, flags, payload, fds...)
	f.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [vhost.HeaderSize + 8]byte
	if _, err := ioReadFull(f.c, b[:]); err != nil {
		f.tb.Fatalf("vhosttest: %v reply: %v", req, err)
	}
	if r := vhost.Request(binary.LittleEndian.Uint32(b[0:])); r != req || binary.LittleEndian.Uint32(b[8:]) != 8 {
		f.tb.Fatalf("vhosttest: %v: unexpected reply %x", req, b)
	}
	return binary.LittleEndian.Uint64(b[vhost.HeaderSize:])
}

func (f *FrontEnd) ack(req vhost.Request, payload []byte, fds ...int) {
	f.tb.Helper()
	if v := f.do(req, payload, false, fds...); v != 0 {
		f.tb.Fatalf("vhosttest: %v refused (%d)", req, v)
	}
}

func ioReadFull(c *net.UnixConn, b []byte) (int, error) {
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

func (f *FrontEnd) u16(off uint64) uint16 { return binary.LittleEndian.Uint16(f.mem[off:]) }
func (f *FrontEnd) put16(off uint64, v uint16) {
	binary.LittleEndian.PutUint16(f.mem[off:], v)
}

func (f *FrontEnd) setDesc(q int, d uint16, off uint64, l uint32, flags, next uint16) {
	b := f.mem[f.desc[q]+16*uint64(d):]
	binary.LittleEndian.PutUint64(b[0:], gpaBase+off)
	binary.LittleEndian.PutUint32(b[8:], l)
	binary.LittleEndian.PutUint16(b[12:], flags)
	binary.LittleEndian.PutUint16(b[14:], next)
}

func (f *FrontEnd) offer(q int, head uint16) {
	f.put16(f.avail[q]+4+2*uint64(f.nextAvail[q]%f.size), head)
	f.nextAvail[q]++
	f.put16(f.avail[q]+2, f.nextAvail[q])
}

func (f *FrontEnd) takeDesc(q int) uint16 {
	d := f.next[q] % f.size
	f.next[q]++
	return d
}

// PostRX makes n RX buffers available, and kicks the RX queue if the
// back-end asked for it (avail_event, EVENT_IDX being negotiated), as
// virtio's virtqueue_kick_prepare does.
func (f *FrontEnd) PostRX(n int) {
	old := f.nextAvail[0]
	for range n {
		d := f.takeDesc(0)
		f.setDesc(0, d, f.bufs[0]+uint64(d)*BufSize, BufSize, descFWrite, 0)
		f.offer(0, d)
	}
	nw := f.nextAvail[0]
	if ev := f.u16(f.used[0] + 4 + 8*uint64(f.size)); nw-ev-1 < nw-old {
		f.Kick(0)
	}
}

// Recycle is a sink's receive: it counts the frames the back-end placed
// since the last call, without copying them, puts their buffers back on
// the RX ring with one avail index update (buffers must have been posted
// with PostRX, which Recycle does not mix with afterwards), kicks if asked,
// and asks for an interrupt at the next frame (used_event), as a driver
// re-enabling interrupts after its poll does.
func (f *FrontEnd) Recycle() int {
	n := 0
	for {
		idx := f.u16(f.used[0] + 2)
		old := f.nextAvail[0]
		for ; f.lastUsed[0] != idx; f.lastUsed[0]++ {
			e := f.mem[f.used[0]+4+8*uint64(f.lastUsed[0]%f.size):]
			id := binary.LittleEndian.Uint32(e)
			if id >= uint32(f.size) {
				f.tb.Errorf("vhosttest: used entry id %d", id)
				continue
			}
			f.put16(f.avail[0]+4+2*uint64(f.nextAvail[0]%f.size), uint16(id))
			f.nextAvail[0]++
			n++
		}
		if nw := f.nextAvail[0]; nw != old {
			f.put16(f.avail[0]+2, nw)
			if ev := f.u16(f.used[0] + 4 + 8*uint64(f.size)); nw-ev-1 < nw-old {
				f.Kick(0)
			}
		}
		f.put16(f.avail[0]+4+2*uint64(f.size), f.lastUsed[0]) // used_event
		if f.u16(f.used[0]+2) == f.lastUsed[0] {
			return n
		}
	}
}

// AvailEvent is queue q's avail_event (EVENT_IDX): the avail index at
// which the back-end asked to be kicked.
func (f *FrontEnd) AvailEvent(q int) uint16 { return f.u16(f.used[q] + 4 + 8*uint64(f.size)) }

// TXInFlight is how many frames on the TX ring the back-end has not
// returned yet (Transmit must not be given more than Size less this).
func (f *FrontEnd) TXInFlight() int { return int(f.nextAvail[1] - f.u16(f.used[1]+2)) }

// CallFD is queue q's call eventfd (the back-end's interrupts).
func (f *FrontEnd) CallFD(q int) int { return f.call[q] }

// PostRXFar makes one RX buffer available that lies beyond the first MiB
// of the guest memory file.
func (f *FrontEnd) PostRXFar() {
	d := f.takeDesc(0)
	f.setDesc(0, d, f.far, 4096, descFWrite, 0)
	f.offer(0, d)
}

// Received returns the frames the back-end placed since the last call
// (each in one buffer: frames are at most BufSize-12 bytes).
func (f *FrontEnd) Received() [][]byte {
	var out [][]byte
	idx := f.u16(f.used[0] + 2)
	for ; f.lastUsed[0] != idx; f.lastUsed[0]++ {
		e := f.mem[f.used[0]+4+8*uint64(f.lastUsed[0]%f.size):]
		id, l := binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(e[4:])
		if id >= uint32(f.size) || l < hdrLen || l > BufSize {
			f.tb.Errorf("vhosttest: used entry id %d len %d", id, l)
			continue
		}
		b := f.mem[f.bufs[0]+uint64(id)*BufSize:]
		out = append(out, append([]byte(nil), b[hdrLen:l]...))
	}
	return out
}

// Transmit puts frames on the TX ring (header and frame in one buffer each)
// and kicks.
func (f *FrontEnd) Transmit(frames ...[]byte) {
	for _, fr := range frames {
		d := f.takeDesc(1)
		off := f.bufs[1] + uint64(d)*BufSize
		clear(f.mem[off : off+hdrLen])
		n := copy(f.mem[off+hdrLen:off+BufSize], fr)
		f.setDesc(1, d, off, uint32(hdrLen+n), 0, 0)
		f.offer(1, d)
	}
	f.Kick(1)
}

// TransmitAcross writes frame (after its header) so that its first inside
// bytes, header included, lie before the end of the first MiB of the guest
// memory file and the rest beyond it. Call it before Shrink; the returned
// function puts the frame on the TX ring and kicks (call it after).
func (f *FrontEnd) TransmitAcross(frame []byte, inside int) (send func()) {
	if inside < 0 || inside > 4096 {
		f.tb.Fatalf("vhosttest: TransmitAcross: %d bytes inside the first MiB, want 0 to 4096", inside)
	}
	start := f.far - uint64(inside) // the page before far is a free gap
	clear(f.mem[start : start+hdrLen])
	n := copy(f.mem[start+hdrLen:f.far+4096], frame)
	d := f.takeDesc(1)
	f.setDesc(1, d, start, uint32(hdrLen+n), 0, 0)
	return func() {
		f.offer(1, d)
		f.Kick(1)
	}
}

// Kick writes queue q's kick eventfd.
func (f *FrontEnd) Kick(q int) {
	unix.Write(f.kick[q], []byte{1, 0, 0, 0, 0, 0, 0, 0})
}

// Shrink truncates the guest memory file to size bytes, as a hostile
// front-end would. Memory beyond it must not be touched afterwards (by the
// test either: PostRX, Received and Transmit stay inside the first MiB).
func (f *FrontEnd) Shrink(size int64) error {
	if err := unix.Ftruncate(f.fd, size); err != nil {
		return fmt.Errorf("vhosttest: ftruncate guest memory to %d: %w", size, err)
	}
	return nil
}

// ErrorSignalled reads and resets queue q's error eventfd (SET_VRING_ERR):
// whether the back-end reported the queue broken.
func (f *FrontEnd) ErrorSignalled(q int) bool {
	var b [8]byte
	n, err := unix.Read(f.errs[q], b[:])
	return err == nil && n == 8
}

// WaitClosed waits (at most timeout) for the back-end to close the
// connection.
func (f *FrontEnd) WaitClosed(timeout time.Duration) error {
	f.c.SetReadDeadline(time.Now().Add(timeout))
	var b [64]byte
	for {
		_, err := f.c.Read(b[:])
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return errors.New("vhosttest: the back-end did not close the connection")
		}
		return nil
	}
}

// Close disconnects and releases everything (idempotent).
func (f *FrontEnd) Close() {
	if f.c != nil {
		f.c.Close()
		f.c = nil
	}
	if f.mem != nil {
		unix.Munmap(f.mem)
		f.mem = nil
	}
	for _, p := range []*int{&f.fd, &f.kick[0], &f.kick[1], &f.call[0], &f.call[1], &f.errs[0], &f.errs[1]} {
		if *p >= 0 {
			unix.Close(*p)
			*p = -1
		}
	}
}
