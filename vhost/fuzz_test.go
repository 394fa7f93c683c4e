package vhost

import (
	"encoding/binary"
	"errors"
	"testing"
)

// FuzzPopAvail fills a descriptor table, an avail ring and a data area with
// fuzz input and walks every chain: no input may panic, hand out a buffer
// outside guest memory, or yield more chains or descriptors than the queue
// allows.
func FuzzPopAvail(f *testing.F) {
	le := binary.LittleEndian
	seed := func(size int, descs [][4]uint64, heads []uint16, idx uint16, table [][4]uint64) []byte {
		b := []byte{byte(size)}
		d := make([]byte, 16)
		for _, x := range descs {
			le.PutUint64(d[0:], x[0])
			le.PutUint32(d[8:], uint32(x[1]))
			le.PutUint16(d[12:], uint16(x[2]))
			le.PutUint16(d[14:], uint16(x[3]))
			b = append(b, d...)
		}
		for len(b) < 1+16*(1<<size) {
			b = append(b, 0)
		}
		for _, h := range heads {
			b = le.AppendUint16(b, h)
		}
		for len(b) < 1+16*(1<<size)+2*(1<<size) {
			b = append(b, 0)
		}
		b = le.AppendUint16(b, idx)
		for _, x := range table {
			le.PutUint64(d[0:], x[0])
			le.PutUint32(d[8:], uint32(x[1]))
			le.PutUint16(d[12:], uint16(x[2]))
			le.PutUint16(d[14:], uint16(x[3]))
			b = append(b, d...)
		}
		return b
	}
	// addresses are offsets into the 1 MiB region unless flags has 0x8000
	f.Add(seed(3, [][4]uint64{{0x1000, 64, 0, 0}}, []uint16{0}, 1, nil), true)
	f.Add(seed(3, [][4]uint64{{0x1000, 64, descFNext, 1}, {0x2000, 100, descFWrite, 0}}, []uint16{0, 0}, 2, nil), false)
	f.Add(seed(2, [][4]uint64{{0, 16, descFNext, 1}, {0, 16, descFNext, 0}}, []uint16{0}, 1, nil), false)
	f.Add(seed(3, [][4]uint64{{0xf0000, 32, descFIndirect, 0}}, []uint16{0}, 1, [][4]uint64{{0x100, 10, descFNext, 1}, {0x200, 10, descFWrite, 0}}), true)
	f.Add(seed(3, [][4]uint64{{0xf0000, 32, descFIndirect, 0}}, []uint16{0}, 1, [][4]uint64{{0x100, 10, descFNext, 1}, {0x200, 10, descFNext, 0}}), true)
	f.Add(seed(3, [][4]uint64{{0xf0000, 16, descFIndirect, 0}}, []uint16{0}, 1, [][4]uint64{{0xf0000, 16, descFIndirect, 0}}), true)
	f.Add(seed(4, [][4]uint64{{0xfffff, 2, 0, 0}, {0x8000, 0xffffffff, 0x8000, 0}}, []uint16{0, 1, 17}, 3, nil), false)
	f.Add(seed(0, nil, []uint16{0}, 200, nil), false)
	f.Add(seed(5, [][4]uint64{{0xfffffffffffffff0, 32, 0x8000, 0}}, []uint16{0}, 1, nil), false)

	f.Fuzz(func(t *testing.T, data []byte, indirect bool) {
		if len(data) < 1 {
			return
		}
		size := 1 << (data[0] % 6)
		data = data[1:]
		fx := newVQFixture(t, uint16(size))
		// The data area at 0xf0000 in region 0 holds the rest of the
		// input (indirect tables).
		area := fx.g.at(testGPABase+0xf0000, 0x10000)
		clear(area)
		descBytes := fx.g.at(fx.r.desc, uint64(16*size))
		n := copy(descBytes, data)
		data = data[n:]
		for i := range size {
			d := descBytes[16*i:]
			fl := le.Uint16(d[12:])
			if fl&0x8000 == 0 {
				le.PutUint64(d, testGPABase+le.Uint64(d)%(2<<20))
			}
		}
		ringBytes := fx.g.at(fx.r.avail+4, uint64(2*size))
		n = copy(ringBytes, data)
		data = data[n:]
		var idx uint16
		if len(data) >= 2 {
			idx = le.Uint16(data)
			data = data[2:]
		}
		copy(area, data)
		for i := 0; i+16 <= len(area) && i < len(data); i += 16 {
			if le.Uint16(area[i+12:])&0x8000 == 0 {
				le.PutUint64(area[i:], testGPABase+le.Uint64(area[i:])%(2<<20))
			}
		}
		fx.r.setAvailIdx(idx)
		q := fx.queue(t, func(c *VirtqueueConfig) { c.Indirect = indirect; c.EventIdx = true })

		var c Chain
		pops := 0
		for {
			ok, err := q.Pop(&c)
			if err != nil {
				if !errors.Is(err, ErrQueueBroken) {
					t.Fatalf("error not wrapping ErrQueueBroken: %v", err)
				}
				break
			}
			if !ok {
				break
			}
			pops++
			if pops > size {
				t.Fatalf("%d chains from a queue of %d", pops, size)
			}
			if len(c.Readable)+len(c.Writable) > size {
				t.Fatalf("chain of %d descriptors in a queue of %d", len(c.Readable)+len(c.Writable), size)
			}
			if c.Head >= uint16(size) {
				t.Fatalf("head %d", c.Head)
			}
			for _, b := range append(c.Readable, c.Writable...) {
				if len(b) > 0 {
					b[0] ^= 0 // touch: must be mapped
					b[len(b)-1] ^= 0
				}
			}
			if err := q.PushUsed(c.Head, uint32(c.WriteLen)); err != nil {
				t.Fatal(err)
			}
		}
		q.PublishUsed()
		if q.Broken() == nil && int(fx.r.usedIdx()) != pops {
			t.Fatalf("used idx %d after %d chains", fx.r.usedIdx(), pops)
		}
	})
}

// FuzzDecode feeds arbitrary bytes and fd counts to the message decoder.
func FuzzDecode(f *testing.F) {
	le := binary.LittleEndian
	msg := func(req Request, flags uint32, payload ...uint64) []byte {
		b := le.AppendUint32(nil, uint32(req))
		b = le.AppendUint32(b, flags)
		b = le.AppendUint32(b, uint32(8*len(payload)))
		for _, p := range payload {
			b = le.AppendUint64(b, p)
		}
		return b
	}
	f.Add(msg(ReqGetFeatures, 1), uint8(0))
	f.Add(msg(ReqSetFeatures, 1|FlagNeedReply, 1<<32), uint8(0))
	f.Add(msg(ReqSetVringKick, 1, 1), uint8(1))
	f.Add(msg(ReqSetVringCall, 1, 0x100), uint8(0))
	f.Add(msg(ReqSetVringAddr, 1, 0, 1, 2, 3, 4), uint8(0))
	f.Add(msg(ReqSetMemTable, 1, 1, 0x100000, 0x1000, 0x7f0000000000, 0), uint8(1))
	f.Add(msg(ReqSetMemTable, 1, 9), uint8(9))
	f.Add(msg(ReqGetVringBase, 1, 0), uint8(0))
	f.Add(msg(ReqSetLogBase, 1, 0x1000, 0), uint8(1))
	f.Add(msg(ReqSetLogBase, 1, 0x1000, 0), uint8(0))
	f.Add(msg(ReqSetLogFD, 1), uint8(1))
	f.Add(msg(Request(99), 1), uint8(0))
	f.Add(msg(ReqSetFeatures, 5, 0), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, nfds uint8) {
		fds := int(nfds % (MaxFDs + 2))
		if len(data) < HeaderSize {
			if _, err := DecodeHeader(data); err == nil {
				t.Fatal("short header accepted")
			}
			return
		}
		h, err := DecodeHeader(data[:HeaderSize])
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("header error not wrapping ErrMalformed: %v", err)
			}
			return
		}
		m, err := Decode(h, data[HeaderSize:], fds, nil)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error not wrapping ErrMalformed: %v", err)
			}
			return
		}
		if int(h.Size) != len(data)-HeaderSize || m.FDs != fds {
			t.Fatalf("accepted size %d with %d payload bytes, %d fds", h.Size, len(data)-HeaderSize, fds)
		}
		switch h.Request {
		case ReqSetMemTable:
			if len(m.Regions) != fds || fds == 0 {
				t.Fatalf("%d regions with %d fds", len(m.Regions), fds)
			}
		case ReqSetLogBase:
			if fds > 1 || h.Size != 16 {
				t.Fatalf("SET_LOG_BASE accepted with %d fds, %d bytes", fds, h.Size)
			}
		case ReqSetLogFD:
			if fds != 1 {
				t.Fatalf("SET_LOG_FD accepted with %d fds", fds)
			}
		case ReqSetVringKick, ReqSetVringCall, ReqSetVringErr:
			if m.VringFD.NoFD != (fds == 0) {
				t.Fatalf("NoFD %v with %d fds", m.VringFD.NoFD, fds)
			}
		default:
			if fds != 0 {
				t.Fatalf("%v accepted with %d fds", h.Request, fds)
			}
		}
	})
}
