package vhost

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Request is a vhost-user front-end request code.
type Request uint32

// Front-end requests (docs/interop/vhost-user.rst in QEMU). Only those the
// back-end handles are named.
const (
	ReqGetFeatures         Request = 1
	ReqSetFeatures         Request = 2
	ReqSetOwner            Request = 3
	ReqResetOwner          Request = 4
	ReqSetMemTable         Request = 5
	ReqSetLogBase          Request = 6
	ReqSetLogFD            Request = 7
	ReqSetVringNum         Request = 8
	ReqSetVringAddr        Request = 9
	ReqSetVringBase        Request = 10
	ReqGetVringBase        Request = 11
	ReqSetVringKick        Request = 12
	ReqSetVringCall        Request = 13
	ReqSetVringErr         Request = 14
	ReqGetProtocolFeatures Request = 15
	ReqSetProtocolFeatures Request = 16
	ReqGetQueueNum         Request = 17
	ReqSetVringEnable      Request = 18
	ReqSendRARP            Request = 19
)

var requestNames = map[Request]string{
	ReqGetFeatures: "GET_FEATURES", ReqSetFeatures: "SET_FEATURES", ReqSetOwner: "SET_OWNER",
	ReqResetOwner: "RESET_OWNER", ReqSetMemTable: "SET_MEM_TABLE", ReqSetLogBase: "SET_LOG_BASE",
	ReqSetLogFD: "SET_LOG_FD", ReqSetVringNum: "SET_VRING_NUM", ReqSetVringAddr: "SET_VRING_ADDR",
	ReqSetVringBase: "SET_VRING_BASE", ReqGetVringBase: "GET_VRING_BASE", ReqSetVringKick: "SET_VRING_KICK",
	ReqSetVringCall: "SET_VRING_CALL", ReqSetVringErr: "SET_VRING_ERR",
	ReqGetProtocolFeatures: "GET_PROTOCOL_FEATURES", ReqSetProtocolFeatures: "SET_PROTOCOL_FEATURES",
	ReqGetQueueNum: "GET_QUEUE_NUM", ReqSetVringEnable: "SET_VRING_ENABLE", ReqSendRARP: "SEND_RARP",
}

func (r Request) String() string {
	if n, ok := requestNames[r]; ok {
		return n
	}
	return fmt.Sprintf("request(%d)", uint32(r))
}

// Header flags.
const (
	FlagVersion     = 0x1    // bits 0-1: protocol version 1
	FlagReply       = 1 << 2 // set in replies
	FlagNeedReply   = 1 << 3 // the front-end wants a REPLY_ACK
	flagVersionMask = 0x3
)

// HeaderSize is the size of a vhost-user message header.
const HeaderSize = 12

// MaxPayload bounds the payload of any accepted request; the largest one the
// back-end handles is SET_MEM_TABLE with MaxMemoryRegions regions.
const MaxPayload = 8 + 32*MaxMemoryRegions

// MaxFDs is the largest number of fds one message may carry.
const MaxFDs = MaxMemoryRegions

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("malformed vhost-user message")

// Header is the fixed part of a vhost-user message.
type Header struct {
	Request Request
	Flags   uint32
	Size    uint32 // payload bytes
}

// NeedReply reports whether the front-end asked for a REPLY_ACK.
func (h Header) NeedReply() bool { return h.Flags&FlagNeedReply != 0 }

// DecodeHeader parses and checks a request header: version 1, not a reply,
// a payload no larger than MaxPayload.
func DecodeHeader(b []byte) (Header, error) {
	if len(b) != HeaderSize {
		return Header{}, fmt.Errorf("%w: header of %d bytes", ErrMalformed, len(b))
	}
	h := Header{
		Request: Request(binary.LittleEndian.Uint32(b[0:])),
		Flags:   binary.LittleEndian.Uint32(b[4:]),
		Size:    binary.LittleEndian.Uint32(b[8:]),
	}
	if h.Flags&flagVersionMask != FlagVersion {
		return h, fmt.Errorf("%w: %v: version %d, want 1", ErrMalformed, h.Request, h.Flags&flagVersionMask)
	}
	if h.Flags&FlagReply != 0 {
		return h, fmt.Errorf("%w: %v: reply flag set in a request", ErrMalformed, h.Request)
	}
	if h.Size > MaxPayload {
		return h, fmt.Errorf("%w: %v: payload of %d bytes exceeds %d", ErrMalformed, h.Request, h.Size, MaxPayload)
	}
	return h, nil
}

// EncodeHeader appends the header of a reply to req with size payload bytes.
func EncodeHeader(b []byte, req Request, size uint32) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(req))
	b = binary.LittleEndian.AppendUint32(b, FlagVersion|FlagReply)
	return binary.LittleEndian.AppendUint32(b, size)
}

// VringState is the payload of SET_VRING_NUM, SET_VRING_BASE,
// GET_VRING_BASE and SET_VRING_ENABLE.
type VringState struct {
	Index uint32
	Num   uint32
}

// VringFlagLog is VHOST_VRING_F_LOG in VringAddr.Flags.
const VringFlagLog = 1

// VringAddr is the payload of SET_VRING_ADDR. The addresses are in the
// front-end's address space.
type VringAddr struct {
	Index uint32
	Flags uint32
	Desc  uint64
	Used  uint64
	Avail uint64
	Log   uint64
}

// VringFD is the payload of SET_VRING_KICK, SET_VRING_CALL and
// SET_VRING_ERR.
type VringFD struct {
	Index uint32
	NoFD  bool // bit 8: no fd attached (polling for kick, none for call/err)
}

const vringFDNoFD = 1 << 8

// Request is a decoded request: exactly one of the payload fields is
// meaningful, according to Header.Request.
type Message struct {
	Header
	U64     uint64
	State   VringState
	Addr    VringAddr
	VringFD VringFD
	Regions []MemoryRegion
	Log     LogBase
	FDs     int // number of fds the request carries (checked)
}

// Decode checks a request's payload size and fd count and parses its
// payload. Unknown requests and requests the back-end does not offer are
// errors. regions is reused for SET_MEM_TABLE (may be nil).
func Decode(h Header, payload []byte, nfds int, regions []MemoryRegion) (Message, error) {
	m := Message{Header: h}
	if uint32(len(payload)) != h.Size {
		return m, fmt.Errorf("%w: %v: header says %d payload bytes, got %d", ErrMalformed, h.Request, h.Size, len(payload))
	}
	want := func(size, fds int) error {
		if len(payload) != size {
			return fmt.Errorf("%w: %v: payload of %d bytes, want %d", ErrMalformed, h.Request, len(payload), size)
		}
		if nfds != fds {
			return fmt.Errorf("%w: %v: %d fds, want %d", ErrMalformed, h.Request, nfds, fds)
		}
		return nil
	}
	le := binary.LittleEndian
	switch h.Request {
	case ReqGetFeatures, ReqGetProtocolFeatures, ReqGetQueueNum, ReqSetOwner, ReqResetOwner:
		if err := want(0, 0); err != nil {
			return m, err
		}
	case ReqSetFeatures, ReqSetProtocolFeatures, ReqSendRARP:
		if err := want(8, 0); err != nil {
			return m, err
		}
		m.U64 = le.Uint64(payload)
	case ReqSetVringNum, ReqSetVringBase, ReqGetVringBase, ReqSetVringEnable:
		if err := want(8, 0); err != nil {
			return m, err
		}
		m.State = VringState{Index: le.Uint32(payload[0:]), Num: le.Uint32(payload[4:])}
	case ReqSetVringAddr:
		if err := want(40, 0); err != nil {
			return m, err
		}
		m.Addr = VringAddr{
			Index: le.Uint32(payload[0:]),
			Flags: le.Uint32(payload[4:]),
			Desc:  le.Uint64(payload[8:]),
			Used:  le.Uint64(payload[16:]),
			Avail: le.Uint64(payload[24:]),
			Log:   le.Uint64(payload[32:]),
		}
	case ReqSetVringKick, ReqSetVringCall, ReqSetVringErr:
		if len(payload) != 8 {
			return m, want(8, 0)
		}
		v := le.Uint64(payload)
		if v&^uint64(0xff|vringFDNoFD) != 0 {
			return m, fmt.Errorf("%w: %v: reserved bits set in %#x", ErrMalformed, h.Request, v)
		}
		m.VringFD = VringFD{Index: uint32(v & 0xff), NoFD: v&vringFDNoFD != 0}
		fds := 1
		if m.VringFD.NoFD {
			fds = 0
		}
		if err := want(8, fds); err != nil {
			return m, err
		}
	case ReqSetLogBase:
		// The fd is checked by the device, which refuses a log without
		// one with a message saying so.
		if nfds > 1 {
			return m, want(16, 1)
		}
		if err := want(16, nfds); err != nil {
			return m, err
		}
		m.Log = LogBase{Size: le.Uint64(payload[0:]), Offset: le.Uint64(payload[8:])}
	case ReqSetLogFD:
		if err := want(0, 1); err != nil {
			return m, err
		}
	case ReqSetMemTable:
		if len(payload) < 8 {
			return m, fmt.Errorf("%w: %v: payload of %d bytes, want at least 8", ErrMalformed, h.Request, len(payload))
		}
		n := le.Uint32(payload[0:])
		if n == 0 || n > MaxMemoryRegions {
			return m, fmt.Errorf("%w: %v: %d regions, want 1 to %d", ErrMalformed, h.Request, n, MaxMemoryRegions)
		}
		if err := want(8+32*int(n), int(n)); err != nil {
			return m, err
		}
		regions = regions[:0]
		for i := range int(n) {
			r := payload[8+32*i : 8+32*(i+1)]
			regions = append(regions, MemoryRegion{
				GuestPhysAddr: le.Uint64(r[0:]),
				Size:          le.Uint64(r[8:]),
				UserAddr:      le.Uint64(r[16:]),
				MmapOffset:    le.Uint64(r[24:]),
			})
		}
		m.Regions = regions
	default:
		return m, fmt.Errorf("%w: unsupported request %v", ErrMalformed, h.Request)
	}
	m.FDs = nfds
	return m, nil
}
