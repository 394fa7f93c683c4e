//go:build linux

package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/xdp-hostd/xdp-hostd/vmtests/vmproto"
)

// udpSocket is a socket bound by UDPListen. Datagrams wait in its (4 MiB)
// receive buffer until UDPCount reads them.
type udpSocket struct {
	conn *net.UDPConn
	seqs map[uint64]bool
}

func (a *agent) udpListen(l vmproto.UDPListen) (vmproto.UDPListenResult, error) {
	if l.Port <= 0 || l.Port > 65535 {
		return vmproto.UDPListenResult{}, fmt.Errorf("udp_listen: bad port %d", l.Port)
	}
	a.udpMu.Lock()
	defer a.udpMu.Unlock()
	if _, ok := a.udp[l.Port]; ok {
		return vmproto.UDPListenResult{}, fmt.Errorf("udp_listen: port %d already bound by an earlier udp_listen", l.Port)
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: l.Port})
	if err != nil {
		return vmproto.UDPListenResult{}, fmt.Errorf("udp_listen: %w", err)
	}
	c.SetReadBuffer(4 << 20)
	a.udp[l.Port] = &udpSocket{conn: c, seqs: map[uint64]bool{}}
	return vmproto.UDPListenResult{Port: c.LocalAddr().(*net.UDPAddr).Port}, nil
}

func payload(marker string, seq, size int) []byte {
	p := fmt.Appendf(nil, "%s %d ", marker, seq)
	for len(p) < size {
		p = append(p, 'x')
	}
	return p
}

// parseSeq returns the sequence number following marker in p.
func parseSeq(p, marker []byte) (uint64, bool) {
	if len(marker) == 0 || !bytes.HasPrefix(p, marker) || len(p) < len(marker)+2 || p[len(marker)] != ' ' {
		return 0, false
	}
	rest := p[len(marker)+1:]
	end := bytes.IndexByte(rest, ' ')
	if end < 0 {
		end = len(rest)
	}
	n, err := strconv.ParseUint(string(rest[:end]), 10, 64)
	return n, err == nil
}

func (a *agent) udpSend(s vmproto.UDPSend) (vmproto.UDPSendResult, error) {
	var res vmproto.UDPSendResult
	dst, err := net.ResolveUDPAddr("udp4", s.Dst)
	if err != nil {
		return res, fmt.Errorf("udp_send: bad dst %q: %w", s.Dst, err)
	}
	if s.Marker == "" || s.Count <= 0 {
		return res, errors.New("udp_send: marker and a positive count are required")
	}
	size := s.Size
	if size <= 0 {
		size = 64
	}
	var conn *net.UDPConn
	a.udpMu.Lock()
	if l, ok := a.udp[s.SrcPort]; ok && s.SrcPort != 0 {
		conn = l.conn
	}
	a.udpMu.Unlock()
	if conn == nil {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: s.SrcPort})
		if err != nil {
			return res, fmt.Errorf("udp_send: bind source port %d: %w", s.SrcPort, err)
		}
		defer c.Close()
		conn = c
	}
	conn.SetWriteBuffer(4 << 20)
	deadline := time.Now().Add(s.Budget() - 5*time.Second)
	for seq := 0; seq < s.Count; seq++ {
		if time.Now().After(deadline) {
			return res, fmt.Errorf("udp_send: out of time after %d of %d datagrams", res.Sent, s.Count)
		}
		n, err := conn.WriteToUDP(payload(s.Marker, seq, size), dst)
		if err != nil {
			// ENOBUFS and the like: back off briefly, retry once.
			time.Sleep(time.Millisecond)
			if n, err = conn.WriteToUDP(payload(s.Marker, seq, size), dst); err != nil {
				return res, fmt.Errorf("udp_send: datagram %d: %w", seq, err)
			}
		}
		res.Sent++
		res.Bytes += n
		if s.Interval > 0 {
			time.Sleep(s.Interval)
		}
	}
	return res, nil
}

func (a *agent) udpCount(c vmproto.UDPCount) (vmproto.UDPCountResult, error) {
	var res vmproto.UDPCountResult
	if c.Marker == "" {
		return res, errors.New("udp_count: marker is required")
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	a.udpMu.Lock()
	s, ok := a.udp[c.Port]
	delete(a.udp, c.Port)
	a.udpMu.Unlock()
	if !ok {
		l, err := net.ListenUDP("udp4", &net.UDPAddr{Port: c.Port})
		if err != nil {
			return res, fmt.Errorf("udp_count: %w", err)
		}
		s = &udpSocket{conn: l, seqs: map[uint64]bool{}}
	}
	defer s.conn.Close()
	marker := []byte(c.Marker)
	s.conn.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 65536)
	for c.Want <= 0 || res.Matched < c.Want {
		n, _, err := s.conn.ReadFromUDP(buf)
		if err != nil {
			break // deadline (or closed)
		}
		res.Bytes += n
		if seq, ok := parseSeq(buf[:n], marker); ok {
			res.Matched++
			s.seqs[seq] = true
		} else {
			res.Other++
		}
	}
	res.Seqs = len(s.seqs)
	return res, nil
}
