// Package agentproto is the protocol between xdp-hostd and the guest agent,
// the program in a VM that manages that VM's XDP program. This comment is
// the reference for anyone writing an agent of their own.
//
// # Channel
//
// The agent speaks on a virtio-serial port named PortName
// (org.xdp-hostd.agent.0; in the guest /dev/virtio-ports/org.xdp-hostd.agent.0,
// or the /dev/vportNpM whose /sys/class/virtio-ports/vportNpM/name says so).
// On the host, QEMU connects that port to a unix socket the daemon serves,
// one per VM. The daemon knows the VM by the socket; nothing the guest sends
// names a VM, so a guest can act on its own VM only.
//
// # Frames
//
// The channel is a byte stream carrying frames in both directions. A frame
// is a 16-byte header, all integers big-endian, then Length bytes of
// payload:
//
//	offset size field
//	0      4    magic    0x58484147 (the bytes "XHAG")
//	4      1    version  1
//	5      1    type     see below
//	6      2    reserved 0
//	8      4    seq      chosen by the agent per request, echoed in the response
//	12     4    length   payload bytes, 0 to MaxPayload (2 MiB = 2097152)
//
// For example the header of a Status request with seq 7 and an empty
// payload is 58 48 41 47 01 02 00 00 00 00 00 07 00 00 00 00.
//
// Types: requests (agent to daemon) are Caps 0x01, Status 0x02, Submit
// 0x03, Replace 0x04 and Remove 0x05; responses (daemon to agent) are OK
// 0x81 and Error 0x82. Every request gets exactly one response with the
// same seq. The agent sends one request at a time and waits for its
// response; an agent should skip a response whose seq is not the one it
// waits for (left over from an earlier, interrupted agent).
//
// # Payloads
//
// Payloads are UTF-8 JSON objects. Requests with fields the daemon does
// not know are refused (code "malformed"), so that a newer agent's option
// is never silently ignored. Byte strings are base64 (standard alphabet,
// with padding) as JSON strings.
//
//	Caps     empty or {}
//	Status   empty or {}
//	Submit   {"name": "filter", "entry": "xdp_main", "object": "f0VMRgIB..."}
//	Replace  {"expect": 7, "name": "filter", "entry": "xdp_main", "object": "f0VMRgIB..."}
//	Remove   {"expect": 7}
//	OK       the result, any JSON value (its fields depend on the request
//	         and the daemon's version: see SubmitRequest and the daemon)
//	Error    {"code": "conflict", "message": "...", "detail": "..."}
//
// name is for people (audit logs) and optional; entry is the XDP function
// in the object, optional if there is only one; object is the ELF object
// file, at most MaxObject (1 MiB) before base64. Submit loads a program on
// a VM that runs none of its own; Replace and Remove act only if expect
// is the ID of the VM's current program (from Status or the Submit result),
// else they fail with "conflict" and change nothing. The daemon answers
// "malformed" to an empty object or an expect of 0, "too_large" to an
// object over MaxObject. The codes of Error are the Code constants; detail
// is optional, several lines (a verifier log, the policy violations).
//
// # Errors in the stream
//
// A frame the daemon cannot read (bad magic, version, reserved field or
// type, a length over the limit, a stream ending inside a frame) gets an
// Error response and the daemon then closes the connection, since the
// stream cannot be resynchronised; QEMU reconnects the socket, and the
// agent's next request starts afresh. That response has the request's seq
// if the header was a readable version 1 header (an unknown type, reserved
// bits, an oversized length, a payload cut short) and seq 0 otherwise; an
// agent should take a seq 0 Error as the answer to its request. The codes
// are "too_large" for the length, "unsupported" for the version and the
// type, "malformed" otherwise. A well-framed request whose JSON does not decode, or that is
// a response type, gets an Error ("malformed", "unsupported") and the
// connection stays.
//
// # Rate limits
//
// Every request counts against a per-VM limit (the daemon's: a burst of
// 30, then 10 a second); Submit, Replace and Remove also against a
// stricter one for program changes (a burst of 5, then one every 2
// seconds). A request over a limit gets an Error with code "rate_limited"
// whose message says when to retry; over the limit for all requests, the
// daemon also stops reading the channel until then, so an agent that
// pipelines requests finds its writes blocking. An agent that sends one
// request at a time and waits for the answer never notices.
package agentproto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// PortName is the name of the virtio-serial port the agent speaks on.
const PortName = "org.xdp-hostd.agent.0"

// Magic and Version of the frame header.
const (
	Magic   = 0x58484147
	Version = 1
)

// HeaderLen is the size of a frame header.
const HeaderLen = 16

// MaxPayload is the largest payload either side accepts: a program object
// of up to MaxObject bytes, base64-encoded in JSON.
const MaxPayload = 2 << 20

// MaxObject is the largest program object an agent may submit.
const MaxObject = 1 << 20

// Type is a frame's type.
type Type uint8

// Frame types.
const (
	TypeCaps    Type = 1
	TypeStatus  Type = 2
	TypeSubmit  Type = 3
	TypeReplace Type = 4
	TypeRemove  Type = 5
	TypeOK      Type = 0x81
	TypeError   Type = 0x82
)

func (t Type) String() string {
	switch t {
	case TypeCaps:
		return "caps"
	case TypeStatus:
		return "status"
	case TypeSubmit:
		return "submit"
	case TypeReplace:
		return "replace"
	case TypeRemove:
		return "remove"
	case TypeOK:
		return "ok"
	case TypeError:
		return "error"
	}
	return fmt.Sprintf("type(%#x)", uint8(t))
}

func (t Type) valid() bool {
	return (t >= TypeCaps && t <= TypeRemove) || t == TypeOK || t == TypeError
}

// Frame is one message.
type Frame struct {
	Type    Type
	Seq     uint32
	Payload []byte
}

// FrameError says why bytes are not a frame. After one, the stream cannot
// be trusted: the reader closes it.
type FrameError struct {
	Reason string
}

func (e *FrameError) Error() string { return "malformed frame: " + e.Reason }

// Errors a FrameError can match with errors.Is.
var (
	ErrBadMagic = errors.New("bad magic")
	ErrVersion  = errors.New("unsupported version")
	ErrReserved = errors.New("reserved bits set")
	ErrType     = errors.New("unknown frame type")
	ErrTooLarge = errors.New("payload too large")
)

type frameErr struct {
	FrameError
	kind error
}

func (e *frameErr) Unwrap() []error { return []error{&e.FrameError, e.kind} }
func (e *frameErr) Error() string   { return e.FrameError.Error() }

func newFrameErr(kind error, format string, a ...any) error {
	return &frameErr{FrameError{fmt.Sprintf(format, a...)}, kind}
}

// ReadFrame reads one frame whose payload is at most max bytes (MaxPayload
// if max <= 0). A length over max is refused before anything is allocated
// for it: ReadFrame never allocates more than max bytes, whatever the
// header says. io.EOF means the stream ended cleanly between frames; any
// other failure to parse is a *FrameError, which errors.Is matches against
// ErrBadMagic, ErrVersion, ErrType, ErrReserved, ErrTooLarge or
// io.ErrUnexpectedEOF (the stream ended inside a frame). Errors of the
// underlying reader are returned as they are. With an error about a header
// that was readable as version 1 (unknown type, reserved bits, length),
// the returned Frame carries its Type and Seq.
func ReadFrame(r io.Reader, max int) (Frame, error) {
	if max <= 0 {
		max = MaxPayload
	}
	var h [HeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return Frame{}, newFrameErr(io.ErrUnexpectedEOF, "the stream ended inside a header")
		}
		return Frame{}, err // io.EOF between frames, or the reader's own error
	}
	if m := binary.BigEndian.Uint32(h[0:]); m != Magic {
		return Frame{}, newFrameErr(ErrBadMagic, "magic %#08x, want %#08x (\"XHAG\")", m, Magic)
	}
	if h[4] != Version {
		return Frame{}, newFrameErr(ErrVersion, "version %d; this side speaks version %d", h[4], Version)
	}
	// From here the header is a version 1 header: its seq is known, and a
	// Frame carrying it is returned with the error so that the reply can
	// echo it.
	t := Type(h[5])
	f := Frame{Type: t, Seq: binary.BigEndian.Uint32(h[8:])}
	if !t.valid() {
		return f, newFrameErr(ErrType, "frame type %#x", h[5])
	}
	if res := binary.BigEndian.Uint16(h[6:]); res != 0 {
		return f, newFrameErr(ErrReserved, "reserved field %#x, want 0", res)
	}
	n := binary.BigEndian.Uint32(h[12:])
	if uint64(n) > uint64(max) {
		return f, newFrameErr(ErrTooLarge, "payload of %d bytes; the limit is %d", n, max)
	}
	f.Payload = make([]byte, n)
	if _, err := io.ReadFull(r, f.Payload); err != nil {
		f.Payload = nil
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return f, newFrameErr(io.ErrUnexpectedEOF, "the stream ended inside a %d-byte payload", n)
		}
		return f, fmt.Errorf("read %d-byte payload of a %s frame: %w", n, t, err)
	}
	return f, nil
}

// AppendFrame appends f's encoding to b.
func AppendFrame(b []byte, f Frame) []byte {
	b = binary.BigEndian.AppendUint32(b, Magic)
	b = append(b, Version, byte(f.Type), 0, 0)
	b = binary.BigEndian.AppendUint32(b, f.Seq)
	b = binary.BigEndian.AppendUint32(b, uint32(len(f.Payload)))
	return append(b, f.Payload...)
}

// WriteFrame writes f with one Write.
func WriteFrame(w io.Writer, f Frame) error {
	if len(f.Payload) > MaxPayload {
		return fmt.Errorf("write %s frame: payload of %d bytes; the limit is %d", f.Type, len(f.Payload), MaxPayload)
	}
	_, err := w.Write(AppendFrame(make([]byte, 0, HeaderLen+len(f.Payload)), f))
	return err
}

// SubmitRequest loads a program on the agent's VM, which must run the
// built-in one.
type SubmitRequest struct {
	// Name is for people (audit logs); it defaults to the file's name.
	Name string `json:"name,omitempty"`
	// Entry is the XDP program's function in the object; empty: the only
	// one.
	Entry  string `json:"entry,omitempty"`
	Object []byte `json:"object"`
}

// ReplaceRequest swaps the VM's program for another if Expect is the ID
// of the one it runs.
type ReplaceRequest struct {
	Expect uint64 `json:"expect"`
	Name   string `json:"name,omitempty"`
	Entry  string `json:"entry,omitempty"`
	Object []byte `json:"object"`
}

// RemoveRequest puts the built-in program back if Expect is the ID of the
// one the VM runs.
type RemoveRequest struct {
	Expect uint64 `json:"expect"`
}

// Error codes.
const (
	CodeMalformed   = "malformed"    // the request could not be read
	CodeTooLarge    = "too_large"    // over a size limit
	CodeUnsupported = "unsupported"  // a frame type or version this side does not serve
	CodeRefused     = "refused"      // the program breaks the host's policy (Detail lists how)
	CodeVerifier    = "verifier"     // the kernel's verifier refused it (Detail is its log)
	CodeConflict    = "conflict"     // Expect is not the current program; nothing changed
	CodeNotFound    = "not_found"    // no such program
	CodeRateLimited = "rate_limited" // too many changes: wait and retry
	CodeInternal    = "internal"     // the daemon failed
)

// Error is the payload of an Error response.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Detail  string `json:"detail,omitempty"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }
