package hostnet

import (
	"errors"
	"fmt"
	"slices"
	"unsafe"

	"golang.org/x/sys/unix"
)

// More of the ethtool ioctl ABI (include/uapi/linux/ethtool.h); the rule
// layout is in ntuple.go.
const (
	ethtoolGFLAGS      = 0x25
	ethtoolGRXCLSRLCNT = 0x2e
	ethtoolGRXCLSRLALL = 0x30
	ethFlagNtuple      = 1 << 27    // ETH_FLAG_NTUPLE: the ntuple-filters feature is on
	rxClsLocSpecial    = 0x80000000 // RX_CLS_LOC_SPECIAL: the driver picks locations (RX_CLS_LOC_ANY works)

	// offsetRuleLocs is offsetof(struct ethtool_rxnfc, rule_locs).
	offsetRuleLocs = unsafe.Offsetof(ethtoolRxnfc{}.RuleCnt) + 4
)

// NtupleInfo is what a device says about its ntuple (RX flow
// classification) rules: how `ethtool -n DEV` and `ethtool -k DEV | grep
// ntuple` see it.
type NtupleInfo struct {
	// Enabled: the ntuple-filters feature is on (ETH_FLAG_NTUPLE). Many
	// drivers accept rules only then: ethtool -K DEV ntuple on.
	Enabled bool `json:"enabled"`
	// TableSize is the number of rule locations.
	TableSize uint32 `json:"table_size"`
	// AnyLocation: the driver chooses a location itself when a rule asks
	// for RX_CLS_LOC_ANY. Without it (ixgbe, i40e and others) the caller
	// must pick a free location (FreeLocation).
	AnyLocation bool `json:"any_location"`
	// Locations are the locations of the rules now installed.
	Locations []uint32 `json:"locations,omitempty"`
}

// FreeLocation returns the lowest free rule location, false if the table
// is full.
func (n NtupleInfo) FreeLocation() (uint32, bool) {
	used := slices.Clone(n.Locations)
	slices.Sort(used)
	var loc uint32
	for _, u := range used {
		if u == loc {
			loc++
		} else if u > loc {
			break
		}
	}
	return loc, loc < n.TableSize
}

// Ntuple reads the ntuple state of ifname in the namespace r runs in (nil:
// the caller's). A device without RX flow classification (veth, tap, most
// virtual devices) gives an error wrapping ErrNotSupported.
func Ntuple(r *NSRunner, ifname string) (NtupleInfo, error) {
	var info NtupleInfo
	err := r.Do(func() error {
		flags := ethtoolValue{Cmd: ethtoolGFLAGS}
		if err := ethtoolIoctl(ifname, unsafe.Pointer(&flags)); err != nil {
			return ethtoolError("ETHTOOL_GFLAGS", ifname, err)
		}
		info.Enabled = flags.Data&ethFlagNtuple != 0

		cnt := ethtoolRxnfc{Cmd: ethtoolGRXCLSRLCNT}
		if err := ethtoolIoctl(ifname, unsafe.Pointer(&cnt)); err != nil {
			return ethtoolError("ETHTOOL_GRXCLSRLCNT", ifname, err)
		}
		info.TableSize = uint32(cnt.Data) &^ rxClsLocSpecial
		info.AnyLocation = uint32(cnt.Data)&rxClsLocSpecial != 0
		if cnt.RuleCnt == 0 {
			return nil
		}
		locs, err := ruleLocations(ifname, cnt.RuleCnt)
		info.Locations = locs
		return err
	})
	return info, err
}

// ruleLocations asks for the locations of n rules (ETHTOOL_GRXCLSRLALL,
// whose reply is struct ethtool_rxnfc followed by n u32 locations).
func ruleLocations(ifname string, n uint32) ([]uint32, error) {
	if n > 1<<16 {
		return nil, fmt.Errorf("%s reports %d ntuple rules, more than any NIC has", ifname, n)
	}
	buf := make([]uint64, (int(offsetRuleLocs)+4*int(n)+7)/8)
	req := (*ethtoolRxnfc)(unsafe.Pointer(&buf[0]))
	req.Cmd = ethtoolGRXCLSRLALL
	req.RuleCnt = n
	if err := ethtoolIoctl(ifname, unsafe.Pointer(&buf[0])); err != nil {
		return nil, ethtoolError("ETHTOOL_GRXCLSRLALL", ifname, err)
	}
	got := min(req.RuleCnt, n)
	locs := unsafe.Slice((*uint32)(unsafe.Add(unsafe.Pointer(&buf[0]), offsetRuleLocs)), n)
	return slices.Clone(locs[:got]), nil
}

func ethtoolError(op, ifname string, err error) error {
	if errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("%w: %s has no ntuple flow steering (%s: %v)", ErrNotSupported, ifname, op, err)
	}
	return fmt.Errorf("%s on %s: %w", op, ifname, err)
}
