package hostnet

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"unsafe"
)

// The offsets and sizes below are what gcc reports for the structs in
// /usr/include/linux/ethtool.h and linux/if.h on amd64 (and any LP64 target).
func TestEthtoolLayout(t *testing.T) {
	var r ethtoolRxnfc
	var ifr ifreqData
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(struct ethtool_rxnfc) up to rule_locs", unsafe.Sizeof(r), 192},
		{"offsetof(ethtool_rxnfc, fs)", unsafe.Offsetof(r.FS), 16},
		{"offsetof(ethtool_rxnfc, rule_cnt)", unsafe.Offsetof(r.RuleCnt), 184},
		{"offsetof(ethtool_rxnfc, rule_locs)", offsetRuleLocs, 188},
		{"sizeof(struct ethtool_rx_flow_spec)", unsafe.Sizeof(r.FS), 168},
		{"offsetof(ethtool_rx_flow_spec, h_u)", unsafe.Offsetof(r.FS.HU), 4},
		{"offsetof(ethtool_rx_flow_spec, h_ext)", unsafe.Offsetof(r.FS.HExt), 56},
		{"offsetof(ethtool_rx_flow_spec, m_u)", unsafe.Offsetof(r.FS.MU), 76},
		{"offsetof(ethtool_rx_flow_spec, m_ext)", unsafe.Offsetof(r.FS.MExt), 128},
		{"offsetof(ethtool_rx_flow_spec, ring_cookie)", unsafe.Offsetof(r.FS.RingCookie), 152},
		{"offsetof(ethtool_rx_flow_spec, location)", unsafe.Offsetof(r.FS.Location), 160},
		{"sizeof(struct ifreq)", unsafe.Sizeof(ifr), 40},
		{"sizeof(struct ethtool_value)", unsafe.Sizeof(ethtoolValue{}), 8},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

// TestMACRuleEncoding checks the bytes SteerMAC hands the kernel. In the
// ioctl ABI a 1 bit in m_u is a bit to match (the ethtool CLI takes masks
// with the opposite sense and inverts them, invert_flow_mask in rxclass.c),
// so only h_dest's mask is all ones.
func TestMACRuleEncoding(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0x78, 0x68, 0, 0, 9}
	r := macRule(mac, 3)
	b := unsafe.Slice((*byte)(unsafe.Pointer(&r)), unsafe.Sizeof(r))
	le := binary.NativeEndian
	if le.Uint32(b[0:]) != 0x32 || le.Uint32(b[4:]) != 0x12 {
		t.Errorf("cmd %#x flow_type %#x, want ETHTOOL_SRXCLSRLINS ETHER_FLOW", le.Uint32(b[0:]), le.Uint32(b[4:]))
	}
	fs := b[16:]
	if le.Uint32(fs[0:]) != 0x12 {
		t.Errorf("fs.flow_type %#x", le.Uint32(fs[0:]))
	}
	hu, mu := fs[4:56], fs[76:128]
	if !bytes.Equal(hu[:6], mac) || !bytes.Equal(hu[6:], make([]byte, 46)) {
		t.Errorf("h_u % x", hu)
	}
	if !bytes.Equal(mu[:6], bytes.Repeat([]byte{0xff}, 6)) || !bytes.Equal(mu[6:], make([]byte, 46)) {
		t.Errorf("m_u % x: want h_dest all ones, h_source and h_proto zero (ignored)", mu)
	}
	if !bytes.Equal(fs[56:76], make([]byte, 20)) || !bytes.Equal(fs[128:148], make([]byte, 20)) {
		t.Error("h_ext/m_ext set: no FLOW_EXT fields are meant")
	}
	if le.Uint64(fs[152:]) != 3 || le.Uint32(fs[160:]) != 0xffffffff {
		t.Errorf("ring_cookie %d location %#x, want 3 RX_CLS_LOC_ANY", le.Uint64(fs[152:]), le.Uint32(fs[160:]))
	}
}

func TestNtupleFreeLocation(t *testing.T) {
	for _, c := range []struct {
		info NtupleInfo
		want uint32
		ok   bool
	}{
		{NtupleInfo{TableSize: 4}, 0, true},
		{NtupleInfo{TableSize: 4, Locations: []uint32{0, 1, 3}}, 2, true},
		{NtupleInfo{TableSize: 4, Locations: []uint32{3, 1, 0}}, 2, true},
		{NtupleInfo{TableSize: 4, Locations: []uint32{2}}, 0, true},
		{NtupleInfo{TableSize: 2, Locations: []uint32{1, 0}}, 2, false},
		{NtupleInfo{}, 0, false},
	} {
		got, ok := c.info.FreeLocation()
		if got != c.want || ok != c.ok {
			t.Errorf("%+v: got %d %v, want %d %v", c.info, got, ok, c.want, c.ok)
		}
	}
}
