package main

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ethtoolChannels is struct ethtool_channels.
type ethtoolChannels struct {
	cmd                                         uint32
	maxRX, maxTX, maxOther, maxCombined         uint32
	rxCount, txCount, otherCount, combinedCount uint32
}

// ifreqData is struct ifreq with ifr_data.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data uintptr
	_    [16]byte
}

func ethtoolChannelsIoctl(ifname string, ch *ethtoolChannels) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var ifr ifreqData
	copy(ifr.name[:], ifname)
	ifr.data = uintptr(unsafe.Pointer(ch))
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return errno
	}
	return nil
}

// setChannels is ethtool -L IFNAME combined N (busybox has no ethtool):
// virtio-net enables only as many queue pairs as the guest has CPUs.
func setChannels(ifname string, n int) (int, error) {
	ch := ethtoolChannels{cmd: unix.ETHTOOL_GCHANNELS}
	if err := ethtoolChannelsIoctl(ifname, &ch); err != nil {
		return 0, fmt.Errorf("ethtool -l %s: %w", ifname, err)
	}
	if n > int(ch.maxCombined) {
		return 0, fmt.Errorf("ethtool -L %s combined %d: the device offers at most %d", ifname, n, ch.maxCombined)
	}
	if int(ch.combinedCount) != n {
		ch.cmd = unix.ETHTOOL_SCHANNELS
		ch.combinedCount = uint32(n)
		if err := ethtoolChannelsIoctl(ifname, &ch); err != nil {
			return 0, fmt.Errorf("ethtool -L %s combined %d: %w", ifname, n, err)
		}
	}
	ch = ethtoolChannels{cmd: unix.ETHTOOL_GCHANNELS}
	if err := ethtoolChannelsIoctl(ifname, &ch); err != nil {
		return 0, fmt.Errorf("ethtool -l %s: %w", ifname, err)
	}
	return int(ch.combinedCount), nil
}
