//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/vmtests/vmproto"
)

func readyInfo() (vmproto.Ready, error) {
	r := vmproto.Ready{Version: vmproto.Version}
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		r.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if b, err := os.ReadFile("/proc/uptime"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			r.UptimeSec, _ = strconv.ParseFloat(f[0], 64)
		}
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return r, fmt.Errorf("list interfaces: %w", err)
	}
	for _, ifi := range ifs {
		r.Interfaces = append(r.Interfaces, describe(ifi))
	}
	return r, nil
}

func describe(ifi net.Interface) vmproto.Interface {
	d := vmproto.Interface{Name: ifi.Name, Index: ifi.Index, MAC: ifi.HardwareAddr.String(), MTU: ifi.MTU, Up: ifi.Flags&net.FlagUp != 0}
	addrs, _ := ifi.Addrs()
	for _, a := range addrs {
		d.Addrs = append(d.Addrs, a.String())
	}
	return d
}

// findInterface finds an interface by MAC (preferred) or name.
func findInterface(mac, name string) (*net.Interface, error) {
	if mac == "" {
		if name == "" {
			return nil, errors.New("neither mac nor name given")
		}
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			return nil, fmt.Errorf("interface %q: %w", name, err)
		}
		return ifi, nil
	}
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return nil, fmt.Errorf("bad mac %q: %w", mac, err)
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	var seen []string
	for i := range ifs {
		if bytes.Equal(ifs[i].HardwareAddr, hw) {
			return &ifs[i], nil
		}
		seen = append(seen, ifs[i].Name+"="+ifs[i].HardwareAddr.String())
	}
	return nil, fmt.Errorf("no interface with mac %s (have %s)", hw, strings.Join(seen, ", "))
}

func configure(c vmproto.Configure) (vmproto.ConfigureResult, error) {
	var res vmproto.ConfigureResult
	if lo, err := netlink.LinkByName("lo"); err == nil {
		netlink.LinkSetUp(lo)
	}
	ifi, err := findInterface(c.MAC, c.Name)
	if err != nil {
		return res, err
	}
	link, err := netlink.LinkByIndex(ifi.Index)
	if err != nil {
		return res, fmt.Errorf("link %s: %w", ifi.Name, err)
	}
	if c.MTU > 0 {
		if err := netlink.LinkSetMTU(link, c.MTU); err != nil {
			return res, fmt.Errorf("set mtu %d on %s: %w", c.MTU, ifi.Name, err)
		}
	}
	if c.Addr != "" {
		addr, err := netlink.ParseAddr(c.Addr)
		if err != nil {
			return res, fmt.Errorf("bad addr %q: %w", c.Addr, err)
		}
		if err := netlink.AddrReplace(link, addr); err != nil {
			return res, fmt.Errorf("add %s to %s: %w", c.Addr, ifi.Name, err)
		}
	}
	if c.Channels > 0 {
		if res.Channels, err = setChannels(ifi.Name, c.Channels); err != nil {
			return res, err
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return res, fmt.Errorf("set %s up: %w", ifi.Name, err)
	}
	for _, n := range c.Neighbors {
		ip := net.ParseIP(n.IP)
		hw, err := net.ParseMAC(n.MAC)
		if ip == nil || err != nil {
			return res, fmt.Errorf("bad neighbor %s/%s", n.IP, n.MAC)
		}
		fam := netlink.FAMILY_V4
		if ip.To4() == nil {
			fam = netlink.FAMILY_V6
		}
		err = netlink.NeighSet(&netlink.Neigh{LinkIndex: ifi.Index, Family: fam, State: netlink.NUD_PERMANENT, IP: ip, HardwareAddr: hw})
		if err != nil {
			return res, fmt.Errorf("add neighbor %s lladdr %s dev %s: %w", n.IP, n.MAC, ifi.Name, err)
		}
	}
	wait := c.CarrierTimeout
	if wait <= 0 {
		wait = 5 * time.Second
	}
	deadline := time.Now().Add(wait)
	for {
		b, _ := os.ReadFile(filepath.Join("/sys/class/net", ifi.Name, "carrier"))
		if strings.TrimSpace(string(b)) == "1" {
			res.Carrier = true
			break
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if fresh, err := net.InterfaceByIndex(ifi.Index); err == nil {
		ifi = fresh
	}
	res.Interface = describe(*ifi)
	return res, nil
}

func counters(c vmproto.Counters) (vmproto.CountersResult, error) {
	ifi, err := findInterface(c.MAC, c.Name)
	if err != nil {
		return vmproto.CountersResult{}, err
	}
	res := vmproto.CountersResult{Name: ifi.Name}
	for name, p := range map[string]*uint64{
		"rx_packets": &res.RXPackets, "tx_packets": &res.TXPackets,
		"rx_bytes": &res.RXBytes, "tx_bytes": &res.TXBytes,
		"rx_dropped": &res.RXDropped, "tx_dropped": &res.TXDropped,
		"rx_errors": &res.RXErrors, "tx_errors": &res.TXErrors,
	} {
		b, err := os.ReadFile(filepath.Join("/sys/class/net", ifi.Name, "statistics", name))
		if err != nil {
			return res, err
		}
		*p, err = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return res, fmt.Errorf("%s of %s: %w", name, ifi.Name, err)
		}
	}
	res.Ethtool, err = ethtoolStats(ifi.Name)
	return res, err
}

func ping(p vmproto.Ping) (vmproto.PingResult, error) {
	var res vmproto.PingResult
	dst := net.ParseIP(p.Addr).To4()
	if dst == nil {
		return res, fmt.Errorf("ping: %q is not an IPv4 address", p.Addr)
	}
	count, interval, timeout := p.Count, p.Interval, p.Timeout
	if count <= 0 {
		count = 3
	}
	if interval <= 0 {
		interval = 200 * time.Millisecond
	}
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return res, fmt.Errorf("ping: raw socket: %w", err)
	}
	defer c.Close()
	id := uint16(os.Getpid())
	deadline := time.Now().Add(timeout)
	c.SetReadDeadline(deadline)

	var mu sync.Mutex // guards sentAt
	sentAt := make(map[uint16]time.Time)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for seq := 0; seq < count && time.Now().Before(deadline); seq++ {
			msg := make([]byte, 8+32)
			msg[0] = 8 // echo request
			binary.BigEndian.PutUint16(msg[4:], id)
			binary.BigEndian.PutUint16(msg[6:], uint16(seq))
			copy(msg[8:], "xdp-hostd vmtest ping")
			binary.BigEndian.PutUint16(msg[2:], checksum(msg))
			mu.Lock()
			sentAt[uint16(seq)] = time.Now()
			mu.Unlock()
			if _, err := c.WriteTo(msg, &net.IPAddr{IP: dst}); err == nil {
				res.Sent++
			}
			time.Sleep(interval)
		}
	}()
	buf := make([]byte, 1500)
	seen := map[uint16]bool{}
	for len(seen) < count {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			break // deadline
		}
		if n < 8 || buf[0] != 0 || binary.BigEndian.Uint16(buf[4:]) != id {
			continue
		}
		if a, ok := from.(*net.IPAddr); !ok || !a.IP.Equal(dst) {
			continue
		}
		seq := binary.BigEndian.Uint16(buf[6:])
		if seen[seq] {
			continue
		}
		seen[seq] = true
		mu.Lock()
		t, ok := sentAt[seq]
		mu.Unlock()
		if ok {
			res.RTTs = append(res.RTTs, time.Since(t))
		}
	}
	c.Close()
	<-done
	res.Received = len(seen)
	return res, nil
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

func execute(e vmproto.Exec) (vmproto.ExecResult, error) {
	var res vmproto.ExecResult
	if len(e.Argv) == 0 {
		return res, errors.New("exec: empty argv")
	}
	timeout := e.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.Argv[0], e.Argv[1:]...)
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if len(out) > 64<<10 {
		out = out[len(out)-64<<10:]
	}
	res.Output = string(out)
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return res, fmt.Errorf("exec %v: timed out after %v; output: %s", e.Argv, timeout, trim(res.Output, 2000))
	case errors.As(err, &ee):
		res.ExitCode = ee.ExitCode()
	case err != nil:
		return res, fmt.Errorf("exec %v: %w", e.Argv, err)
	}
	return res, nil
}

func poweroff() {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		fmt.Fprintf(os.Stderr, "guest: poweroff: %v\n", err)
	}
}
