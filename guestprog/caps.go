package guestprog

import (
	"fmt"
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
	// PortTable says how a program sends to the ports of its VM's table
	// (xdp_hostd.h): by its return value; the host issues the redirect.
	PortTable PortTableCaps `json:"port_table"`
	Limits    Limits        `json:"limits"`
	// Filled in by the daemon for one VM; empty from Caps().
	VM             string   `json:"vm,omitempty"`
	DeliveryModes  []string `json:"delivery_modes,omitempty"`
	Ports          []uint32 `json:"ports,omitempty"`
	UplinkFeatures any      `json:"uplink_xdp_features,omitempty"`
	Rules          []Rule   `json:"rules"`
}

// PortTableCaps describes the verdicts that reach a VM's port table.
type PortTableCaps struct {
	MaxPorts   int    `json:"max_ports"`
	UplinkPort int    `json:"uplink_port"`
	Redirect   string `json:"redirect"`
	Broadcast  string `json:"broadcast"`
	// SourceMAC is the rule for frames that leave through the uplink.
	SourceMAC string `json:"source_mac"`
}

// Caps returns the policy's part of the capability document, with the
// limits in force.
func Caps(lim Limits) Capabilities {
	lim = lim.withDefaults()
	c := Capabilities{
		Version:    CapsVersion,
		ABIVersion: ABIVersion,
		PortTable: PortTableCaps{MaxPorts: MaxPorts, UplinkPort: 0,
			Redirect:  fmt.Sprintf("return xdp_hostd_redirect_port(n) (verdict %#x + n, n < %d); a port not in the table drops (no_port)", VerdictPort, MaxPorts),
			Broadcast: fmt.Sprintf("return xdp_hostd_broadcast() (verdict %#x): every port but the uplink", VerdictBroadcast),
			SourceMAC: "XDP_TX and redirects to the uplink must carry the VM's source MAC, else dropped (spoofed)"},
		Limits: lim,
		Rules: []Rule{RuleProgramType, RuleEntry, RuleBTF, RuleHelper, RuleRedirectIfidx, RuleRedirectTarget, RuleRedirectHelper, RuleABIVersion, RuleHostState,
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
