package traffic

import (
	"errors"
	"fmt"
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// MaxQueues is the number of RX queues a QueueCounter tells apart; frames on
// higher queues are counted on queue MaxQueues-1.
const MaxQueues = 64

// QueueCounter is a native XDP program on a receiving interface (in tests,
// the uplink veth) that counts frames per RX queue (ctx->rx_queue_index):
// marked frames (built by this package) are counted and dropped, other
// frames (host noise such as IPv6 neighbour discovery) are counted apart and
// passed. Attaching it also gives a veth the NAPI receive queues that native
// XDP (and so per-queue delivery) needs.
type QueueCounter struct {
	objs trafficObjects
	link link.Link
}

// AttachQueueCounter attaches a QueueCounter (native XDP) to ifname in the
// namespace at nsPath ("" for the caller's).
func AttachQueueCounter(nsPath, ifname string) (*QueueCounter, error) {
	c := &QueueCounter{}
	if err := loadTrafficObjects(&c.objs, nil); err != nil {
		return nil, fmt.Errorf("load queue counter: %w", err)
	}
	err := inNS(nsPath, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		c.link, err = link.AttachXDP(link.XDPOptions{Program: c.objs.XhRxqCount, Interface: ifi.Index, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		c.objs.Close()
		return nil, fmt.Errorf("attach queue counter to %s: %w", ifname, err)
	}
	return c, nil
}

// QueueCounts are the frames a QueueCounter saw, by RX queue.
type QueueCounts struct {
	Marked [MaxQueues]uint64
	Other  [MaxQueues]uint64
}

// Counts sums the per-CPU counters.
func (c *QueueCounter) Counts() (QueueCounts, error) {
	var out QueueCounts
	for _, m := range []struct {
		m   *ebpf.Map
		dst *[MaxQueues]uint64
	}{{c.objs.RxqMarked, &out.Marked}, {c.objs.RxqOther, &out.Other}} {
		var percpu []uint64
		for q := uint32(0); q < MaxQueues; q++ {
			if err := m.m.Lookup(q, &percpu); err != nil {
				return out, fmt.Errorf("read queue counter: %w", err)
			}
			for _, v := range percpu {
				m.dst[q] += v
			}
		}
	}
	return out, nil
}

// Close detaches the program.
func (c *QueueCounter) Close() error {
	var errs []error
	if c.link != nil {
		errs = append(errs, c.link.Close())
	}
	errs = append(errs, c.objs.Close())
	return errors.Join(errs...)
}
