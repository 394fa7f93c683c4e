package traffic

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/asavie/xdp"
	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
)

// Sender sends frames out of a veth (the "wire" side) so that they arrive on
// a chosen RX queue of its peer (the uplink).
//
// It uses one AF_XDP socket (copy mode) per TX queue: the kernel builds each
// skb with queue_mapping set to the socket's queue, and a veth delivers a
// frame to the RX queue of its peer with the same number. (Frames sent with
// XDP_TX or redirect into a veth land on the queue of the sending CPU
// instead, and cannot be aimed.) github.com/asavie/xdp provides the sockets.
type Sender struct {
	ns      *hostnet.NSRunner
	ifname  string
	ifindex int
	socks   map[int]*xdp.Socket
	buf     []xdp.Desc
}

// Rings sized for bursts: with the library's default 64-entry rings most of
// a burst is lost (design.md).
var senderOpts = xdp.SocketOptions{
	NumFrames:              4096,
	FrameSize:              2048,
	FillRingNumDescs:       64,
	CompletionRingNumDescs: 2048,
	RxRingNumDescs:         0,
	TxRingNumDescs:         2048,
}

// NewSender prepares to send out of ifname in the namespace at nsPath.
func NewSender(nsPath, ifname string) (*Sender, error) {
	ns, err := hostnet.NewNSRunner(nsPath)
	if err != nil {
		return nil, err
	}
	s := &Sender{ns: ns, ifname: ifname, socks: map[int]*xdp.Socket{}}
	err = ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return fmt.Errorf("sender interface %s: %w", ifname, err)
		}
		s.ifindex = ifi.Index
		return nil
	})
	if err != nil {
		ns.Close()
		return nil, err
	}
	return s, nil
}

func (s *Sender) socket(queue int) (*xdp.Socket, error) {
	if x, ok := s.socks[queue]; ok {
		return x, nil
	}
	var x *xdp.Socket
	err := s.ns.Do(func() (err error) {
		x, err = xdp.NewSocket(s.ifindex, queue, &senderOpts)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("AF_XDP socket on %s queue %d: %w", s.ifname, queue, err)
	}
	s.socks[queue] = x
	return x, nil
}

// Send sends count frames of spec with sequence numbers seq0, seq0+1, ...
// on TX queue `queue` and waits (at most 10 s) until the kernel has sent
// them all. Frames go out in batches of up to 256.
func (s *Sender) Send(spec FrameSpec, queue int, seq0 uint32, count int) (err error) {
	x, err := s.socket(queue)
	if err != nil {
		return err
	}
	defer func() {
		// asavie/xdp panics on unexpected sendto errors.
		if r := recover(); r != nil {
			err = fmt.Errorf("AF_XDP transmit on %s queue %d: %v", s.ifname, queue, r)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	sent, done := 0, 0
	for done < count {
		if time.Now().After(deadline) {
			return fmt.Errorf("send on %s queue %d: %d of %d frames completed within 10s", s.ifname, queue, done, count)
		}
		if n := min(count-sent, x.NumFreeTxSlots(), 256); n > 0 {
			descs := x.GetDescs(n)
			for i := range descs {
				l, err := spec.Build(x.GetFrame(descs[i]), seq0+uint32(sent+i))
				if err != nil {
					return err
				}
				descs[i].Len = uint32(l)
			}
			sent += x.Transmit(descs)
		} else {
			x.Transmit(nil) // kick the kernel to send what is queued
		}
		// (Socket.Poll reads the RX ring, which this TX-only socket lacks.)
		if x.NumCompleted() == 0 {
			pfd := []unix.PollFd{{Fd: int32(x.FD()), Events: unix.POLLOUT}}
			if _, err := unix.Poll(pfd, 10); err != nil && err != unix.EINTR {
				return fmt.Errorf("poll AF_XDP socket: %w", err)
			}
		}
		if c := x.NumCompleted(); c > 0 {
			x.Complete(c)
			done += c
		}
	}
	return nil
}

// Close closes the sockets.
func (s *Sender) Close() error {
	var errs []error
	for _, x := range s.socks {
		errs = append(errs, x.Close())
	}
	s.socks = nil
	errs = append(errs, s.ns.Close())
	return errors.Join(errs...)
}
