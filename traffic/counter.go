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
// the background and counts them by marker tag. Each source has one reader
// with one buffer; a wakeup drains the source with reads until it is empty.
type Counter struct {
	parse    func([]byte) (Marker, bool)
	mu       sync.Mutex
	byTag    map[uint16]uint64
	unmarked uint64
	total    atomic.Uint64 // marked frames
	errs     []error

	stop atomic.Bool
	wg   sync.WaitGroup
}

// Snapshot is what a Counter has seen so far.
type Snapshot struct {
	ByTag    map[uint16]uint64
	Unmarked uint64 // frames without a marker (host noise such as IPv6 ND)
	Errors   []error
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
	c := &Counter{parse: parse, byTag: map[uint16]uint64{}}
	for i, src := range sources {
		c.wg.Add(1)
		go c.read(fmt.Sprintf("source %d", i), src)
	}
	return c
}

func (c *Counter) read(name string, f Source) {
	defer c.wg.Done()
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
				c.count(buf[:n])
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

func (c *Counter) count(frame []byte) {
	m, ok := c.parse(frame)
	c.mu.Lock()
	if ok {
		c.byTag[m.Tag]++
	} else {
		c.unmarked++
	}
	c.mu.Unlock()
	if ok {
		c.total.Add(1)
	}
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

// Total is the number of marked frames counted.
func (c *Counter) Total() uint64 { return c.total.Load() }

// Snapshot copies the counts.
func (c *Counter) Snapshot() Snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Snapshot{ByTag: make(map[uint16]uint64, len(c.byTag)), Unmarked: c.unmarked, Errors: append([]error(nil), c.errs...)}
	for k, v := range c.byTag {
		s.ByTag[k] = v
	}
	return s
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
