package main

import (
	"bytes"
	"encoding/binary"
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

func ethtoolIoctl(ifname string, buf []byte) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var ifr ifreqData
	copy(ifr.name[:], ifname)
	ifr.data = uintptr(unsafe.Pointer(&buf[0]))
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return errno
	}
	return nil
}

// ethtoolStats is ethtool -S IFNAME (virtio-net: per-queue counters such
// as rx_queue_1_packets).
func ethtoolStats(ifname string) (map[string]uint64, error) {
	const ethSSStats, ethGStringLen = 1, 32
	info := make([]byte, 20)
	binary.NativeEndian.PutUint32(info[0:], unix.ETHTOOL_GSSET_INFO)
	binary.NativeEndian.PutUint64(info[8:], 1<<ethSSStats)
	if err := ethtoolIoctl(ifname, info); err != nil {
		return nil, fmt.Errorf("ethtool GSSET_INFO %s: %w", ifname, err)
	}
	n := binary.NativeEndian.Uint32(info[16:])
	if binary.NativeEndian.Uint64(info[8:]) == 0 || n == 0 || n > 4096 {
		return nil, nil
	}
	strs := make([]byte, 12+int(n)*ethGStringLen)
	binary.NativeEndian.PutUint32(strs[0:], unix.ETHTOOL_GSTRINGS)
	binary.NativeEndian.PutUint32(strs[4:], ethSSStats)
	binary.NativeEndian.PutUint32(strs[8:], n)
	if err := ethtoolIoctl(ifname, strs); err != nil {
		return nil, fmt.Errorf("ethtool GSTRINGS %s: %w", ifname, err)
	}
	vals := make([]byte, 8+int(n)*8)
	binary.NativeEndian.PutUint32(vals[0:], unix.ETHTOOL_GSTATS)
	binary.NativeEndian.PutUint32(vals[4:], n)
	if err := ethtoolIoctl(ifname, vals); err != nil {
		return nil, fmt.Errorf("ethtool GSTATS %s: %w", ifname, err)
	}
	out := make(map[string]uint64, n)
	for i := range int(n) {
		s := strs[12+i*ethGStringLen : 12+(i+1)*ethGStringLen]
		if j := bytes.IndexByte(s, 0); j >= 0 {
			s = s[:j]
		}
		out[string(s)] = binary.NativeEndian.Uint64(vals[8+i*8:])
	}
	return out, nil
}
