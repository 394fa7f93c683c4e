package hostnet

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/nsrun"
)

const ethtoolGGRO = 0x0000002b // ETHTOOL_GGRO

// maxNetNSScan bounds the named namespaces searched for a veth's peer.
const maxNetNSScan = 4096

// RedirectProblem says why the kernel would drop the frames XDP sends into
// ifname (a native-mode redirect from another device, or XDP_TX on ifname
// itself; a VM's tap transmit runs in generic mode and is not affected),
// in the namespace at netnsPath ("" for the caller's): ifname is
// a veth whose peer is down, or has neither an XDP program nor GRO on. A
// veth hands XDP frames to its peer through NAPI queues the peer has only
// then; without them every such frame is dropped, silently (no device
// counter shows it). It returns "" when ifname is no veth or its peer
// takes such frames. An error wrapping ErrNotFound means the peer is in a
// namespace this process cannot find (only /run/netns/* and the init and
// own namespaces are searched): nothing could be told.
func RedirectProblem(netnsPath, ifname string) (string, error) {
	var peerIndex, nsid int
	err := nsrun.Do(netnsPath, func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return fmt.Errorf("%q: %w in %s: %v", ifname, ErrNoSuchInterface, nsName(netnsPath), err)
		}
		if l.Type() != "veth" {
			return nil
		}
		peerIndex, nsid = l.Attrs().ParentIndex, l.Attrs().NetNsID
		return nil
	})
	if err != nil || peerIndex == 0 {
		return "", err
	}
	peerNS := netnsPath
	if nsid >= 0 {
		if peerNS, err = findNetNS(netnsPath, nsid); err != nil {
			return "", fmt.Errorf("%s: veth peer (ifindex %d, namespace ID %d): %w", ifname, peerIndex, nsid, err)
		}
	}
	var problem string
	err = nsrun.Do(peerNS, func() error {
		p, err := netlink.LinkByIndex(peerIndex)
		if err != nil {
			return fmt.Errorf("%s: veth peer ifindex %d in %s: %w", ifname, peerIndex, nsName(peerNS), err)
		}
		a := p.Attrs()
		peer := fmt.Sprintf("its veth peer %s (in %s)", a.Name, nsName(peerNS))
		if a.Flags&net.FlagUp == 0 {
			problem = fmt.Sprintf("%s is down: the kernel drops every frame redirected into %s; bring the peer up (ip link set %s up)", peer, ifname, a.Name)
			return nil
		}
		if a.Xdp != nil && a.Xdp.Attached {
			return nil
		}
		gro := ethtoolValue{Cmd: ethtoolGGRO}
		if err := ethtoolIoctl(a.Name, unsafe.Pointer(&gro)); err != nil {
			return fmt.Errorf("read GRO of %s (ETHTOOL_GGRO): %w", a.Name, err)
		}
		if gro.Data == 0 {
			problem = fmt.Sprintf("%s has neither an XDP program nor GRO on: the kernel drops every frame XDP sends into %s from a driver-mode program (XDP_TX, a redirect to the port), though they count as sent; turn GRO on on the peer (ethtool -K %s gro on) or attach an XDP program to it", peer, ifname, a.Name)
		}
		return nil
	})
	return problem, err
}

// findNetNS returns the path of the namespace known as nsid in the
// namespace at from: the init namespace's, the caller's (""), or one of
// /run/netns.
func findNetNS(from string, nsid int) (string, error) {
	cands := []string{"", "/proc/1/ns/net"}
	names, _ := os.ReadDir("/run/netns")
	for i, n := range names {
		if i == maxNetNSScan {
			break
		}
		cands = append(cands, filepath.Join("/run/netns", n.Name()))
	}
	found := ""
	err := nsrun.Do(from, func() error {
		for _, c := range cands {
			path := c
			if path == "" {
				path = "/proc/self/ns/net" // the caller's own: this thread is elsewhere now
			}
			fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				continue
			}
			id, err := netlink.GetNetNsIdByFd(fd)
			unix.Close(fd)
			if err == nil && id == nsid {
				found = c
				return nil
			}
		}
		return fmt.Errorf("%w: no network namespace under /run/netns has that ID", ErrNotFound)
	})
	if err != nil {
		return "", err
	}
	return found, nil
}
