package guestprog

import (
	"os"
	"regexp"
	"slices"
	"strconv"
	"testing"
)

func TestCapsFromPolicy(t *testing.T) {
	c := Caps(Limits{})
	for _, h := range []string{"bpf_map_lookup_elem", "bpf_tail_call", "bpf_xdp_adjust_head"} {
		if !slices.Contains(c.Helpers, h) {
			t.Errorf("caps lack %s: %v", h, c.Helpers)
		}
	}
	for _, h := range []string{"bpf_redirect", "bpf_redirect_map", "bpf_fib_lookup", "bpf_trace_printk", "bpf_probe_read_kernel"} {
		if slices.Contains(c.Helpers, h) {
			t.Errorf("caps allow refused helper %s", h)
		}
	}
	// Every allowed helper that reads the host is named in host_facts,
	// and every fact names an allowed helper.
	facts := map[string]bool{}
	for _, f := range c.HostFacts {
		facts[f.Helper] = true
		if f.Helper[0] != '(' && !slices.Contains(c.Helpers, f.Helper) {
			t.Errorf("host fact of %s, which the policy refuses", f.Helper)
		}
	}
	for _, h := range []string{"bpf_ktime_get_ns", "bpf_jiffies64", "bpf_get_smp_processor_id", "bpf_get_numa_node_id", "bpf_get_prandom_u32"} {
		if slices.Contains(c.Helpers, h) && !facts[h] {
			t.Errorf("caps allow %s but do not list what it reveals in host_facts", h)
		}
	}
	for _, r := range []Rule{RuleMemoryQuota, RuleProgramLimit, RuleHostState} {
		if !slices.Contains(c.Rules, r) {
			t.Errorf("caps do not list rule %s", r)
		}
	}
	if c.Limits.MaxInstructions == 0 || c.Limits.Memory == 0 || c.Limits.MaxPrograms == 0 || c.Limits.PossibleCPUs == 0 {
		t.Errorf("limits not filled: %+v", c.Limits)
	}
}

// The Go side and the guest ABI header agree on the ABI version.
func TestABIVersionMatchesHeader(t *testing.T) {
	b, err := os.ReadFile("../bpf/include/xdp_hostd.h")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`#define XDP_HOSTD_ABI_VERSION (\d+)`).FindSubmatch(b)
	if m == nil {
		t.Fatal("no XDP_HOSTD_ABI_VERSION in xdp_hostd.h")
	}
	if v, _ := strconv.Atoi(string(m[1])); v != ABIVersion {
		t.Errorf("header says ABI %d, Go says %d", v, ABIVersion)
	}
	for name, want := range map[string]int{"XDP_HOSTD_VERDICT_PORT": VerdictPort, "XDP_HOSTD_VERDICT_BROADCAST": VerdictBroadcast, "XDP_HOSTD_MAX_PORTS": MaxPorts} {
		m := regexp.MustCompile(`#define ` + name + ` (0x[0-9a-fA-F]+|\d+)`).FindSubmatch(b)
		if m == nil {
			t.Errorf("no %s in xdp_hostd.h", name)
			continue
		}
		if v, _ := strconv.ParseInt(string(m[1]), 0, 64); int(v) != want {
			t.Errorf("header says %s = %d, Go says %d", name, v, want)
		}
	}
}
