package zerocopy

import (
	"errors"
	"fmt"
	"math/bits"

	"golang.org/x/sys/unix"
)

// UMEM is the memory an AF_XDP socket receives into and sends from, cut into
// frames of FrameSize bytes. Its memory belongs to whoever supplied it: the
// daemon (AllocUMEM, copy mode) or, later, a VM (its guest memory, shared by
// vhost-user, for zero-copy mode). Addresses are offsets from the start of
// the memory, as in the rings.
//
// The kernel uses UMEMs in aligned mode here: FrameSize is a power of two, a
// descriptor's frame is Addr &^ (FrameSize-1), and the kernel places received
// packets at Headroom + XDP_PACKET_HEADROOM (256) bytes into a frame.
//
// A UMEM is registered with one socket at a time (each Open registers it
// anew; XDP_SHARED_UMEM is not used). It is safe for concurrent reads.
type UMEM struct {
	mem       []byte
	frameSize uint64
	shift     uint // log2(frameSize)
	headroom  uint32
	owned     bool // mapped by AllocUMEM: Close unmaps it
}

// MinFrameSize is the smallest frame the kernel accepts (XDP_UMEM_MIN_CHUNK_SIZE).
const MinFrameSize = 2048

// RXHeadroom is the space the kernel leaves in front of a received packet
// in copy mode, on top of the UMEM's own headroom (XDP_PACKET_HEADROOM).
const RXHeadroom = unix.XDP_PACKET_HEADROOM

// NewUMEM makes a UMEM over mem, which must be page-aligned (for example
// from unix.Mmap) and a whole number of frames long. frameSize is a power of
// two from 2048 up to the page size. headroom is left free in front of every
// packet (received or sent), for example for a virtio-net header; it must
// leave room for a packet.
func NewUMEM(mem []byte, frameSize, headroom int) (*UMEM, error) {
	if frameSize < MinFrameSize || frameSize&(frameSize-1) != 0 {
		return nil, fmt.Errorf("UMEM frame size %d: want a power of two, at least %d", frameSize, MinFrameSize)
	}
	if len(mem) == 0 || len(mem)%frameSize != 0 {
		return nil, fmt.Errorf("UMEM of %d bytes: want a positive multiple of the frame size %d", len(mem), frameSize)
	}
	if !pageAligned(mem) {
		return nil, errors.New("UMEM memory is not page-aligned (the kernel pins whole pages)")
	}
	if headroom < 0 || headroom+RXHeadroom+MinFrame > frameSize {
		return nil, fmt.Errorf("UMEM headroom %d: want 0 to %d for %d-byte frames", headroom, frameSize-RXHeadroom-MinFrame, frameSize)
	}
	return &UMEM{
		mem:       mem,
		frameSize: uint64(frameSize),
		shift:     uint(bits.TrailingZeros(uint(frameSize))),
		headroom:  uint32(headroom),
	}, nil
}

// MinFrame is the least room for a packet NewUMEM leaves in a frame (an
// Ethernet header and a minimal payload).
const MinFrame = 64

// AllocUMEM maps frames*frameSize bytes of anonymous, pre-faulted memory and
// makes a UMEM over it with no headroom; Close unmaps it.
func AllocUMEM(frames, frameSize int) (*UMEM, error) {
	if frames <= 0 || frameSize <= 0 || frames > (1<<40)/frameSize {
		return nil, fmt.Errorf("UMEM of %d frames of %d bytes: out of range", frames, frameSize)
	}
	mem, err := unix.Mmap(-1, 0, frames*frameSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("map UMEM of %d frames of %d bytes: %w", frames, frameSize, err)
	}
	u, err := NewUMEM(mem, frameSize, 0)
	if err != nil {
		unix.Munmap(mem)
		return nil, err
	}
	u.owned = true
	return u, nil
}

// Close unmaps the memory if AllocUMEM mapped it; memory supplied to NewUMEM
// stays its owner's. Close the sockets using the UMEM first.
func (u *UMEM) Close() error {
	if !u.owned || u.mem == nil {
		return nil
	}
	err := unix.Munmap(u.mem)
	u.mem = nil
	return err
}

// Bytes is the whole memory.
func (u *UMEM) Bytes() []byte { return u.mem }

// FrameSize is the size of a frame.
func (u *UMEM) FrameSize() int { return int(u.frameSize) }

// Frames is the number of frames.
func (u *UMEM) Frames() int { return int(uint64(len(u.mem)) >> u.shift) }

// Headroom is the space left free in front of each packet.
func (u *UMEM) Headroom() int { return int(u.headroom) }

// MaxTXFrame is the largest packet Transmit copies into a frame.
func (u *UMEM) MaxTXFrame() int { return int(u.frameSize) - int(u.headroom) }

// FrameBase returns the address of the frame addr lies in.
func (u *UMEM) FrameBase(addr uint64) uint64 { return addr &^ (u.frameSize - 1) }

// Frame returns the bytes d describes, or nil if d does not lie inside one
// frame of the UMEM (a descriptor is never trusted to stay in bounds, since
// in zero-copy mode the memory and the descriptors come from a guest). The
// slice's capacity ends with it.
func (u *UMEM) Frame(d Desc) []byte {
	off := d.Addr & (u.frameSize - 1)
	if d.Addr >= uint64(len(u.mem)) || off+uint64(d.Len) > u.frameSize {
		return nil
	}
	end := d.Addr + uint64(d.Len)
	return u.mem[d.Addr:end:end]
}

// frameAt returns the frame at base, from its headroom on, for writing.
func (u *UMEM) frameAt(base uint64) []byte {
	return u.mem[base+uint64(u.headroom) : base+u.frameSize : base+u.frameSize]
}
