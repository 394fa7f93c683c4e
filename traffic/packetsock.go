package traffic

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// OpenPacketSocket opens a non-blocking AF_PACKET socket that receives every
// frame arriving on ifname (in the namespace at nsPath), but not the frames
// sent from it. Read it with a Counter.
func OpenPacketSocket(nsPath, ifname string) (*os.File, error) {
	var f *os.File
	err := inNS(nsPath, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return fmt.Errorf("packet socket on %s: %w", ifname, err)
		}
		proto := htons(unix.ETH_P_ALL)
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(proto))
		if err != nil {
			return fmt.Errorf("packet socket on %s: %w", ifname, err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
			unix.Close(fd)
			return fmt.Errorf("packet socket on %s: ignore outgoing: %w", ifname, err)
		}
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind packet socket to %s: %w", ifname, err)
		}
		f = os.NewFile(uintptr(fd), "packet:"+ifname)
		return nil
	})
	return f, err
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// ListenUDP opens a UDP socket on ip:port in the namespace at nsPath, with
// a receive buffer large enough for the bursts tests send (8 MiB, set with
// SO_RCVBUFFORCE past the net.core.rmem_max limit: root only). Count what it
// receives with NewPayloadCounter.
func ListenUDP(nsPath string, ip net.IP, port int) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := inNS(nsPath, func() (err error) {
		c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: ip, Port: port})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s:%d: %w", ip, port, err)
	}
	rc, err := c.SyscallConn()
	if err == nil {
		rc.Control(func(fd uintptr) {
			err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
		})
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("receive buffer of %s:%d: %w", ip, port, err)
	}
	return c, nil
}
