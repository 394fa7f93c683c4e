package bench

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/vhost/vhosttest"
)

// goSink is the cheap sink: a small virtio front-end (vhosttest's) on the
// port's vhost-user socket, with a 1024-entry RX ring. Its thread, pinned
// to the forwarder's CPU, sleeps on the call eventfd and, woken, counts
// the frames and reposts their buffers in bulk with one avail index
// update, as a guest's NAPI poll does; it burns no CPU waiting.
type goSink struct {
	fe      *vhosttest.FrontEnd
	got     atomic.Uint64
	stop    atomic.Bool
	done    chan struct{}
	mu      sync.Mutex
	errs    []string
	cleanup []func()
}

type sinkFatal struct{ msg string }

func (s *goSink) Helper() {}
func (s *goSink) Errorf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errs = append(s.errs, fmt.Sprintf(format, args...))
}
func (s *goSink) Fatalf(format string, args ...any) { panic(sinkFatal{fmt.Sprintf(format, args...)}) }
func (s *goSink) Cleanup(f func())                  { s.cleanup = append(s.cleanup, f) }

// startGoSink connects to sock and starts receiving on cpu. With sealable
// its memory is a memfd the back-end can seal against shrinking (as QEMU's
// memory-backend-memfd), which zero-copy mode requires.
func startGoSink(sock string, cpu int, sealable bool) (s *goSink, err error) {
	s = &goSink{done: make(chan struct{})}
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(sinkFatal)
			if !ok {
				panic(r)
			}
			s.close()
			s, err = nil, fmt.Errorf("Go sink: %s", f.msg)
		}
	}()
	const size = 1024
	o := vhosttest.Options{Size: size}
	if sealable {
		o.Memory = sealableMemfd
	}
	s.fe = vhosttest.Dial(s, sock, o)
	s.fe.PostRX(size)
	go s.run(cpu)
	return s, nil
}

func sealableMemfd(size int64) (int, error) {
	fd, err := unix.MemfdCreate("xdp-hostd-bench-guest", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, fmt.Errorf("sealable guest memory: %w", err)
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("sealable guest memory: %w", err)
	}
	return fd, nil
}

func (s *goSink) run(cpu int) {
	defer close(s.done)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	pinTo(cpu)
	fd := s.fe.CallFD(0)
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	var buf [8]byte
	for !s.stop.Load() {
		if n := s.fe.Recycle(); n > 0 {
			s.got.Add(uint64(n))
			continue
		}
		// Bounded, so stop is seen.
		unix.Poll(pfd, 100)
		unix.Read(fd, buf[:])
	}
}

// settled returns the count once it stopped moving for 200 ms (at most 5 s).
func (s *goSink) settled() uint64 {
	last := s.got.Load()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		n := s.got.Load()
		if n == last {
			break
		}
		last = n
	}
	return last
}

func (s *goSink) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.errs) > 0 {
		return errors.New("Go sink: " + s.errs[0])
	}
	return nil
}

func (s *goSink) close() {
	if s.fe != nil && s.done != nil {
		s.stop.Store(true)
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
		}
	}
	for i := len(s.cleanup) - 1; i >= 0; i-- {
		s.cleanup[i]()
	}
	s.cleanup = nil
}

// TXPoint is the guest -> wire direction: the Go front-end transmits
// frames from the VM's MAC as fast as the port takes them back.
type TXPoint struct {
	Frames    uint64        `json:"frames"`     // the guest put on its TX ring
	Elapsed   time.Duration `json:"elapsed"`    // until the last was returned
	GuestPPS  float64       `json:"guest_pps"`  // Frames / Elapsed
	TXSent    uint64        `json:"tx_sent"`    // the port queued on AF_XDP (after the source MAC check)
	TXDropped uint64        `json:"tx_dropped"` // AF_XDP back-pressure
	TXSpoofed uint64        `json:"tx_spoofed"`
	WireGot   uint64        `json:"wire_got"` // the wire veth's RX packets
	WirePPS   float64       `json:"wire_pps"`
}

// transmit sends n copies of frame in batches from a thread pinned to cpu
// (a guest vCPU), waiting (yielding) while the TX ring is full.
func (s *goSink) transmit(n, cpu int, frame []byte) time.Duration {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var old unix.CPUSet
	unix.SchedGetaffinity(0, &old)
	defer unix.SchedSetaffinity(0, &old)
	pinTo(cpu)
	const size, batch = 1024, 256
	frames := make([][]byte, batch)
	for i := range frames {
		frames[i] = frame
	}
	start := time.Now()
	deadline := start.Add(60 * time.Second)
	for sent := 0; sent < n && time.Now().Before(deadline); {
		if s.fe.TXInFlight() > size-batch {
			unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
			continue
		}
		k := min(batch, n-sent)
		s.fe.Transmit(frames[:k]...)
		sent += k
	}
	for s.fe.TXInFlight() > 0 && time.Now().Before(deadline) {
		unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
	}
	return time.Since(start)
}
