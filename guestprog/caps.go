package guestprog

import (
	"sort"
)

// CapsVersion is the version of the capability document's format.
const CapsVersion = 1

// Capabilities is what a guest agent reads before it submits a program: the
// ABI, what the static policy allows, the limits, and what this VM and its
// uplink offer. The helper and map type lists are generated from the policy
// itself, so the document cannot disagree with what Check enforces.
type Capabilities struct {
	Version    int      `json:"version"`
	ABIVersion int      `json:"abi_version"`
	Helpers    []string `json:"helpers"`
	MapTypes   []string `json:"map_types"`
	// PortTable describes the one redirect map: its declaration comes from
	// xdp_hostd.h.
	PortTable PortTableCaps `json:"port_table"`
	Limits    Limits        `json:"limits"`
	// Filled in by the daemon for one VM; empty from Caps().
	VM             string   `json:"vm,omitempty"`
	DeliveryModes  []string `json:"delivery_modes,omitempty"`
	Ports          []uint32 `json:"ports,omitempty"`
	UplinkFeatures any      `json:"uplink_xdp_features,omitempty"`
	Rules          []Rule   `json:"rules"`
}

// PortTableCaps describes port_table.
type PortTableCaps struct {
	Map        string `json:"map"`
	Type       string `json:"type"`
	MaxEntries int    `json:"max_entries"`
	UplinkPort int    `json:"uplink_port"`
	Broadcast  string `json:"broadcast"`
}

// Caps returns the policy's part of the capability document, with the
// limits in force.
func Caps(lim Limits) Capabilities {
	lim = lim.withDefaults()
	c := Capabilities{
		Version:    CapsVersion,
		ABIVersion: ABIVersion,
		PortTable: PortTableCaps{Map: PortTableMap, Type: portTableType.String(), MaxEntries: 64, UplinkPort: 0,
			Broadcast: "bpf_redirect_map(&port_table, 0, BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS)"},
		Limits: lim,
		Rules: []Rule{RuleProgramType, RuleEntry, RuleBTF, RuleHelper, RuleRedirectIfidx, RuleRedirectTarget, RuleHostState,
			RuleHostOutput, RuleKernelMemory, RuleTailCall, RuleMapType, RuleMapInMap, RulePinnedMap, RuleMapQuota,
			RuleInsnLimit, RuleReservedName, RuleFrags},
	}
	for fn, hr := range helpers {
		if hr.rule == "" {
			c.Helpers = append(c.Helpers, helperName(fn))
		}
	}
	sort.Strings(c.Helpers)
	for t := range mapTypes {
		c.MapTypes = append(c.MapTypes, t.String())
	}
	sort.Strings(c.MapTypes)
	return c
}
