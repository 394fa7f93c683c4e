package demo

import (
	"fmt"
	"net"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
)

// listenUDP opens a UDP socket inside the runner's namespace.
func listenUDP(ns *hostnet.NSRunner, ip net.IP, port int) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := ns.Do(func() (err error) {
		c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: ip, Port: port})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s:%d in %s: %w", ip, port, ns.Path(), err)
	}
	if err := c.SetReadBuffer(4 << 20); err != nil {
		c.Close()
		return nil, fmt.Errorf("socket buffer: %w", err)
	}
	return c, nil
}
