package zerocopy

import (
	"errors"
	"fmt"
)

// FramePool is a bounded pool of free UMEM frames (xdp-hostd's "page pool"):
// a LIFO stack of frame addresses with a fixed capacity, so that the frame
// used last, still warm in the cache, is used next. Get and Put move frames
// in bulk and never allocate; a frame is either in the pool or out of it, and
// Put refuses a frame already in the pool (double free) or outside the
// UMEM, so a bug cannot hand the kernel one frame twice.
//
// A FramePool is not safe for concurrent use.
type FramePool struct {
	free      []uint64 // stack of frame base addresses; cap == frames
	in        []uint64 // bit per frame: in the pool
	frameSize uint64
	shift     uint
	frames    uint64
}

// ErrDoubleFree is returned by Put for a frame already in the pool.
var ErrDoubleFree = errors.New("frame is already in the pool")

// ErrNotInUMEM is returned by Put for an address outside the pool's frames.
var ErrNotInUMEM = errors.New("address outside the UMEM")

// NewFramePool returns a pool of frames frames of frameSize bytes (a power
// of two), at addresses 0, frameSize, 2*frameSize, ..., all in the pool.
func NewFramePool(frames, frameSize int) (*FramePool, error) {
	if frames <= 0 || frameSize <= 0 || frameSize&(frameSize-1) != 0 {
		return nil, fmt.Errorf("frame pool of %d frames of %d bytes: want frames > 0 and a power-of-two size", frames, frameSize)
	}
	p := &FramePool{
		free:      make([]uint64, frames),
		in:        make([]uint64, (frames+63)/64),
		frameSize: uint64(frameSize),
		frames:    uint64(frames),
	}
	for s := frameSize; s > 1; s >>= 1 {
		p.shift++
	}
	// Lowest addresses on top of the stack.
	for i := range p.free {
		p.free[i] = uint64(frames-1-i) << p.shift
		p.in[i/64] |= 1 << (i % 64)
	}
	return p, nil
}

// Len is the number of frames in the pool.
func (p *FramePool) Len() int { return len(p.free) }

// Cap is the number of frames the pool manages.
func (p *FramePool) Cap() int { return int(p.frames) }

// Get takes up to len(dst) frames out of the pool into dst and returns how
// many it took.
func (p *FramePool) Get(dst []uint64) int {
	n := min(len(dst), len(p.free))
	top := len(p.free) - n
	copy(dst, p.free[top:])
	for _, a := range dst[:n] {
		i := a >> p.shift
		p.in[i/64] &^= 1 << (i % 64)
	}
	p.free = p.free[:top]
	return n
}

// Put returns frames to the pool. An address anywhere in a frame returns
// that frame (a received descriptor's address points past the headroom).
// Addresses outside the pool's frames and frames already in the pool are
// skipped; the error says how many and why (ErrNotInUMEM, ErrDoubleFree).
func (p *FramePool) Put(addrs []uint64) error {
	var bad, dup int
	var first uint64
	for _, a := range addrs {
		if !p.put(a) {
			if bad+dup == 0 {
				first = a
			}
			if a>>p.shift >= p.frames {
				bad++
			} else {
				dup++
			}
		}
	}
	if bad+dup == 0 {
		return nil
	}
	var errs []error
	if bad > 0 {
		errs = append(errs, fmt.Errorf("%d addresses: %w", bad, ErrNotInUMEM))
	}
	if dup > 0 {
		errs = append(errs, fmt.Errorf("%d frames: %w", dup, ErrDoubleFree))
	}
	return fmt.Errorf("frame pool put (first refused address %#x): %w", first, errors.Join(errs...))
}

// put returns one frame, reporting whether it was accepted.
func (p *FramePool) put(addr uint64) bool {
	i := addr >> p.shift
	if i >= p.frames {
		return false
	}
	w, bit := i/64, uint64(1)<<(i%64)
	if p.in[w]&bit != 0 {
		return false
	}
	p.in[w] |= bit
	p.free = append(p.free, i<<p.shift) // never grows: cap == frames
	return true
}
