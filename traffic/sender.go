package traffic

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/asavie/xdp"
	"golang.org/x/sys/unix"
)

// Sender sends frames out of a veth (the "wire" side) so that they arrive on
// a chosen RX queue of its peer (the uplink).
//
// It uses one AF_XDP socket (copy mode) per TX queue of the wire veth. In
// copy mode the kernel (xsk_generic_xmit) builds an skb per frame with
// queue_mapping set to the socket's queue and hands it straight to the
// driver (__dev_direct_xmit, no qdisc, no TX queue selection), and veth_xmit
// puts it on the peer's RX queue with the same number. On a veth the frames
// are not lost: when the peer's ring is full the kernel keeps them in the TX
// ring until there is room (Send waits for completion).
//
// The alternatives, measured on Linux 6.18 (see TestQueueAimingAlternatives):
//   - AF_PACKET, with or without PACKET_QDISC_BYPASS: the queue is the
//     flow hash's (skb_tx_hash), which cannot be chosen.
//   - a tc/tcx egress program writing skb->queue_mapping = v: the kernel
//     does not use v as the TX queue, it takes it for a recorded RX queue
//     v-1 and skb_tx_hash maps that to queue (v-1) % queues (v = 0 falls
//     back to the flow hash). It aims, but through a quirk of the TX hash,
//     not through an interface meant for it.
//   - XDP_TX or XDP_REDIRECT into a veth (Blast): the frame lands on the
//     peer's RX queue of the sending CPU (smp_processor_id() % queues).
//
// The receiving veth must have NAPI receive queues (an XDP program attached,
// or GRO on); otherwise every frame is received through the backlog on no
// particular queue. github.com/asavie/xdp provides the sockets; its Close
// does not unmap the rings, so a socket stays bound to its queue until the
// process exits: keep one Sender per interface rather than opening a new
// one on the same queue (that gets EBUSY). (package zerocopy has sockets
// that close properly; traffic does not use them because zerocopy's own
// tests use traffic.)
//
// A Sender is not safe for concurrent use.
type Sender struct {
	nsPath  string
	ifname  string
	ifindex int
	socks   map[int]*xdp.Socket
}

// Rings sized for bursts: with the library's default 64-entry rings most of
// a burst is lost (design.md). TX only: no RX ring; the fill ring is unused
// but the kernel requires one.
var senderOpts = xdp.SocketOptions{
	NumFrames:              4096,
	FrameSize:              2048,
	FillRingNumDescs:       64,
	CompletionRingNumDescs: 4096,
	RxRingNumDescs:         0,
	TxRingNumDescs:         2048,
}

const (
	// MaxSendFrame is the largest frame a Sender sends.
	MaxSendFrame = 2048
	sendBatch    = 256
	sendTimeout  = 10 * time.Second
)

// NewSender prepares to send out of ifname in the namespace at nsPath ("" for
// the caller's). Sockets are opened on first use of a queue.
func NewSender(nsPath, ifname string) (*Sender, error) {
	s := &Sender{nsPath: nsPath, ifname: ifname, socks: map[int]*xdp.Socket{}}
	err := inNS(nsPath, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return fmt.Errorf("sender interface %s: %w", ifname, err)
		}
		s.ifindex = ifi.Index
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// SendToQueue sends frames out of ifname (in the namespace at nsPath) so that
// they arrive on RX queue `queue` of its veth peer, and returns when the
// kernel has sent them all (at most 10 s). It opens and closes a Sender:
// keep a Sender for repeated sends.
func SendToQueue(nsPath, ifname string, queue int, frames [][]byte) error {
	s, err := NewSender(nsPath, ifname)
	if err != nil {
		return err
	}
	serr := s.SendFrames(queue, frames)
	return errors.Join(serr, s.Close())
}

func (s *Sender) socket(queue int) (*xdp.Socket, error) {
	if x, ok := s.socks[queue]; ok {
		return x, nil
	}
	var x *xdp.Socket
	err := inNS(s.nsPath, func() (err error) {
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
// on TX queue `queue` (so to RX queue `queue` of the peer) and waits (at
// most 10 s) until the kernel has sent them all. Frames are built straight
// into the socket's buffers and go out in batches of up to 256 per system
// call.
func (s *Sender) Send(spec FrameSpec, queue int, seq0 uint32, count int) error {
	if max(spec.Size, 64) > MaxSendFrame {
		return fmt.Errorf("send frames of %d bytes: at most %d", spec.Size, MaxSendFrame)
	}
	return s.send(queue, count, func(buf []byte, i int) (int, error) {
		return spec.Build(buf, seq0+uint32(i))
	})
}

// SendFrames sends frames, in order, on TX queue `queue` (so to RX queue
// `queue` of the peer) and waits (at most 10 s) until the kernel has sent
// them all, in batches of up to 256 per system call.
func (s *Sender) SendFrames(queue int, frames [][]byte) error {
	for i, f := range frames {
		if len(f) < 14 || len(f) > MaxSendFrame {
			return fmt.Errorf("send frame %d of %d bytes: want 14 to %d", i, len(f), MaxSendFrame)
		}
	}
	return s.send(queue, len(frames), func(buf []byte, i int) (int, error) {
		return copy(buf, frames[i]), nil
	})
}

func (s *Sender) send(queue, count int, fill func(buf []byte, i int) (int, error)) (err error) {
	if queue < 0 {
		return fmt.Errorf("send on %s: queue %d", s.ifname, queue)
	}
	x, err := s.socket(queue)
	if err != nil {
		return err
	}
	defer func() {
		// asavie/xdp panics on unexpected sendto errors.
		if r := recover(); r != nil {
			err = fmt.Errorf("AF_XDP transmit on %s queue %d: %v", s.ifname, queue, r)
		}
		if err != nil {
			// Frames may be left in the rings: start afresh next time.
			delete(s.socks, queue)
			x.Close()
		}
	}()
	deadline := time.Now().Add(sendTimeout)
	sent, done := 0, 0
	for done < count {
		if time.Now().After(deadline) {
			return fmt.Errorf("send on %s queue %d: %d of %d frames completed within %v", s.ifname, queue, done, count, sendTimeout)
		}
		if n := min(count-sent, x.NumFreeTxSlots(), sendBatch); n > 0 {
			descs := x.GetDescs(n)
			for i := range descs {
				l, err := fill(x.GetFrame(descs[i]), sent+i)
				if err != nil {
					return err
				}
				descs[i].Len = uint32(l)
			}
			sent += x.Transmit(descs)
		} else {
			x.Transmit(nil) // kick the kernel to send what is queued
		}
		// (Socket.Poll waits on the RX ring, which this TX-only socket lacks.)
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
	return errors.Join(errs...)
}
