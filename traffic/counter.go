package traffic

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Counter reads frames from tap queues (or datagrams from UDP sockets) in
// the background and counts them by marker tag, with duplicates (a tag and
// sequence number seen before) and frames without a marker. Each source has
// one reader goroutine with one buffer; a wakeup (the runtime's poller)
// drains the source with non-blocking reads until it is empty. Counting
// allocates only when a tag is first seen or its record of sequence numbers
// grows.
//
// Sources must be non-blocking: a tap queue opened with O_NONBLOCK (or set
// so) and wrapped with os.NewFile is registered with the runtime poller,
// which is what makes SetReadDeadline work on it.
type Counter struct {
	parse    func([]byte) (Marker, bool)
	mu       sync.Mutex
	byTag    map[uint16]*tagCount
	unmarked uint64
	dups     uint64
	bySource []uint64
	total    atomic.Uint64 // marked frames, duplicates included
	errs     []error

	stop atomic.Bool
	wg   sync.WaitGroup
}

// DupTrackLimit bounds duplicate detection: sequence numbers from
// DupTrackLimit up are counted but not checked for duplicates (a Counter
// keeps one bit per sequence number and tag, 2 MiB per tag at most).
const DupTrackLimit = 1 << 24

type tagCount struct {
	n, dups uint64
	seen    []uint64 // bit per sequence number
}

// Snapshot is what a Counter has seen so far.
type Snapshot struct {
	ByTag      map[uint16]uint64 // marked frames by tag, duplicates included
	DupsByTag  map[uint16]uint64 // frames whose tag and sequence number came before
	Duplicates uint64            // all duplicates
	Unmarked   uint64            // frames without a marker (host noise such as IPv6 ND)
	BySource   []uint64          // frames read (marked or not) per source, in NewCounter's order
	Errors     []error           // read errors: a reader stops at its first
}

// Source is something a Counter reads from: a non-blocking *os.File (a tap
// queue) or a *net.UDPConn.
type Source interface {
	syscall.Conn
	SetReadDeadline(time.Time) error
}

// NewCounter starts counting frames (with Ethernet headers) read from
// sources, until Close.
func NewCounter(sources ...Source) *Counter {
	return newCounter(ParseMarker, sources)
}

// NewPayloadCounter starts counting datagrams whose payload starts with a
// marker (UDP sockets), until Close.
func NewPayloadCounter(sources ...Source) *Counter {
	return newCounter(ParsePayloadMarker, sources)
}

func newCounter(parse func([]byte) (Marker, bool), sources []Source) *Counter {
	c := &Counter{parse: parse, byTag: map[uint16]*tagCount{}, bySource: make([]uint64, len(sources))}
	for i, src := range sources {
		c.wg.Add(1)
		go c.read(i, src)
	}
	return c
}

func (c *Counter) read(i int, f Source) {
	defer c.wg.Done()
	name := fmt.Sprintf("source %d", i)
	rc, err := f.SyscallConn()
	if err != nil {
		c.fail(fmt.Errorf("read %s: %w", name, err))
		return
	}
	buf := make([]byte, 65536)
	for !c.stop.Load() {
		// Bounded waits, so Close is seen within 50 ms.
		if err := f.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
			c.fail(fmt.Errorf("read %s: %w (the fd must be non-blocking)", name, err))
			return
		}
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			for {
				n, err := unix.Read(int(fd), buf)
				if err == unix.EAGAIN {
					return false
				}
				if err != nil {
					rerr = err
					return true
				}
				c.count(i, buf[:n])
			}
		})
		if rerr != nil && !errors.Is(rerr, unix.EBADF) {
			c.fail(fmt.Errorf("read %s: %w", name, rerr))
			return
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			if !errors.Is(err, os.ErrClosed) {
				c.fail(fmt.Errorf("read %s: %w", name, err))
			}
			return
		}
	}
}

func (c *Counter) count(src int, frame []byte) {
	m, ok := c.parse(frame)
	c.mu.Lock()
	c.bySource[src]++
	if !ok {
		c.unmarked++
		c.mu.Unlock()
		return
	}
	t := c.byTag[m.Tag]
	if t == nil {
		t = &tagCount{}
		c.byTag[m.Tag] = t
	}
	t.n++
	if m.Seq < DupTrackLimit {
		w, bit := int(m.Seq/64), uint64(1)<<(m.Seq%64)
		if w >= len(t.seen) {
			t.seen = append(t.seen, make([]uint64, max(w+1, 2*len(t.seen), 64)-len(t.seen))...)
		}
		if t.seen[w]&bit != 0 {
			t.dups++
			c.dups++
		}
		t.seen[w] |= bit
	}
	c.mu.Unlock()
	c.total.Add(1)
}

func (c *Counter) fail(err error) {
	c.mu.Lock()
	c.errs = append(c.errs, err)
	c.mu.Unlock()
}

// WaitFor waits until n marked frames were counted, then a further quiet
// 100 ms so that surplus frames would be seen too, or until ctx ends.
func (c *Counter) WaitFor(ctx context.Context, n uint64) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for c.total.Load() < n {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	select {
	case <-ctx.Done():
	case <-time.After(100 * time.Millisecond):
	}
	return nil
}

// Wait waits until n marked frames were counted, then a quiet 100 ms more
// (so that surplus frames are counted too), or until timeout. It reports
// whether n frames were counted.
func (c *Counter) Wait(n uint64, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.WaitFor(ctx, n) == nil
}

// Total is the number of marked frames counted, duplicates included.
func (c *Counter) Total() uint64 { return c.total.Load() }

// Missing is how many of the sequence numbers 0..n-1 of tag were not seen
// (n at most DupTrackLimit).
func (c *Counter) Missing(tag uint16, n uint32) uint64 {
	n = min(n, DupTrackLimit)
	c.mu.Lock()
	defer c.mu.Unlock()
	var seen []uint64
	if t := c.byTag[tag]; t != nil {
		seen = t.seen
	}
	missing := uint64(0)
	for s := uint32(0); s < n; s++ {
		if w := int(s / 64); w >= len(seen) || seen[w]&(1<<(s%64)) == 0 {
			missing++
		}
	}
	return missing
}

// Snapshot copies the counts.
func (c *Counter) Snapshot() Snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Snapshot{
		ByTag:      make(map[uint16]uint64, len(c.byTag)),
		DupsByTag:  make(map[uint16]uint64),
		Duplicates: c.dups,
		Unmarked:   c.unmarked,
		BySource:   append([]uint64(nil), c.bySource...),
		Errors:     append([]error(nil), c.errs...),
	}
	for k, t := range c.byTag {
		s.ByTag[k] = t.n
		if t.dups > 0 {
			s.DupsByTag[k] = t.dups
		}
	}
	return s
}

// CountFrames counts the frames read from sources until want marked frames
// were counted (and a quiet 100 ms after) or timeout passed, whichever is
// first, and returns the counts. The sources stay open. A timeout is not an
// error: compare the counts with what was sent.
func CountFrames(want uint64, timeout time.Duration, sources ...Source) Snapshot {
	c := NewCounter(sources...)
	c.Wait(want, timeout)
	c.Close()
	return c.Snapshot()
}

// Close stops the readers (within 50 ms); the files stay open.
func (c *Counter) Close() {
	c.stop.Store(true)
	c.wg.Wait()
}

// WriteFrames writes count frames of spec (sequence numbers 0..count-1) into
// f, as a VM writes into its tap.
func WriteFrames(f *os.File, spec FrameSpec, count int) error {
	buf := make([]byte, max(spec.Size, 64))
	for i := 0; i < count; i++ {
		n, err := spec.Build(buf, uint32(i))
		if err != nil {
			return err
		}
		if _, err := f.Write(buf[:n]); err != nil {
			return fmt.Errorf("write frame %d of %d: %w", i, count, err)
		}
	}
	return nil
}
