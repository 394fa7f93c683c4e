package vmport

import (
	"context"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/nsrun"
)

// floodFilter is a classic BPF socket filter that keeps only frames whose
// destination MAC is a group address (broadcast, multicast).
var floodFilter = []unix.SockFilter{
	{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: 0},                 // A = dst[0]
	{Code: unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K, Jt: 0, Jf: 1, K: 1}, // group bit?
	{Code: unix.BPF_RET | unix.BPF_K, K: 0xffff},
	{Code: unix.BPF_RET | unix.BPF_K, K: 0},
}

// openFlood opens a packet socket on the uplink that receives the broadcast
// and multicast frames the dispatcher passed to the host stack (those on
// shared queues): the slow path that gives a vhost-user VM its copy, as the
// tc flood program does for tap VMs. Frames on the VM's dedicated queues
// never reach it: XDP sent them to the VM already.
func openFlood(netns, ifname string) (int, error) {
	fd := -1
	err := nsrun.Do(netns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		proto := uint16(unix.ETH_P_ALL)<<8 | uint16(unix.ETH_P_ALL)>>8
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(proto)); err != nil {
			return err
		}
		prog := unix.SockFprog{Len: uint16(len(floodFilter)), Filter: &floodFilter[0]}
		if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog); err != nil {
			return fmt.Errorf("socket filter: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
			return fmt.Errorf("ignore outgoing: %w", err)
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index})
	})
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("flood socket on %s: %w", ifname, err)
	}
	return fd, nil
}

// flood delivers the uplink's shared-queue broadcasts into the guest's
// first queue pair, a batch per wakeup.
func (p *Port) flood(ctx context.Context, fd int) {
	defer p.wg.Done()
	defer unix.Close(fd)
	const batch = 32
	bufs := make([][]byte, batch)
	frames := make([][]byte, 0, batch)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	for ctx.Err() == nil {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(pfd, 100); err != nil || n == 0 {
			if err != nil && err != unix.EINTR {
				time.Sleep(10 * time.Millisecond)
			}
			continue
		}
		frames = frames[:0]
		for len(frames) < batch {
			n, _, err := unix.Recvfrom(fd, bufs[len(frames)], unix.MSG_DONTWAIT)
			if err != nil {
				break
			}
			if n >= 14 && bufs[len(frames)][0]&1 != 0 {
				frames = append(frames, bufs[len(frames)][:n])
			}
		}
		if len(frames) == 0 {
			continue
		}
		delivered := p.deliverFlood(frames)
		p.stats.floodDelivered.Add(uint64(delivered))
		p.stats.rxDropped.Add(uint64(len(frames) - delivered))
	}
}
