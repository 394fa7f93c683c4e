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
	// Limits are the VM's quotas: instructions, programs and maps per
	// object, and kernel memory (maps and programs).
	Limits Limits `json:"limits"`
	// HostFacts are what an accepted program can still learn about the
	// host through the allowed helpers.
	HostFacts []HostFact `json:"host_facts"`
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

// HostFact is one thing about the host a guest program can observe.
type HostFact struct {
	Helper  string `json:"helper"`
	Reveals string `json:"reveals"`
}

// hostFacts are the allowed helpers that read the host. The policy refuses
// the others that do (rule host-state), and __kconfig externs.
var hostFacts = []HostFact{
	{"bpf_ktime_get_ns", "the host's monotonic clock (uptime, to the nanosecond)"},
	{"bpf_ktime_get_boot_ns", "the host's boot-time clock (uptime including suspend)"},
	{"bpf_ktime_get_coarse_ns", "the host's monotonic clock at tick resolution"},
	{"bpf_jiffies64", "the host's jiffies counter (uptime and the kernel's HZ)"},
	{"bpf_get_smp_processor_id", "the host CPU running the program (the queue's interrupt affinity)"},
	{"bpf_get_numa_node_id", "the host NUMA node of that CPU"},
	{"bpf_get_prandom_u32", "values from the host's per-CPU pseudo-random generator (not a secret generator; its state is shared with the host kernel)"},
	{"(timing)", "how long helpers and map operations take, hence the load of the host's CPU"},
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
		Limits:    lim,
		HostFacts: hostFacts,
		Rules: []Rule{RuleProgramType, RuleEntry, RuleBTF, RuleHelper, RuleRedirectIfidx, RuleRedirectTarget, RuleRedirectHelper, RuleABIVersion, RuleHostState,
			RuleHostOutput, RuleKernelMemory, RuleTailCall, RuleMapType, RuleMapInMap, RulePinnedMap, RuleMapQuota,
			RuleMemoryQuota, RuleProgramLimit, RuleInsnLimit, RuleReservedName, RuleFrags},
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
