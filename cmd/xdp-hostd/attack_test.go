package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/traffic"
)

var attackerMAC = net.HardwareAddr{0x02, 0, 0, 0, 0xee, 0x01}

func vmShow(t *testing.T, sock, name string) daemon.VMStatus {
	t.Helper()
	code, out, errs := cli(t, "vm", "show", "--json", sock, name)
	var vms []daemon.VMStatus
	if err := json.Unmarshal([]byte(out), &vms); code != 0 || err != nil || len(vms) != 1 {
		t.Fatalf("vm show: exit %d %v\n%s%s", code, err, out, errs)
	}
	return vms[0]
}

func attackFrames(topo *hostnet.Topology, tag uint16) traffic.FrameSpec {
	return traffic.FrameSpec{Dst: attackerMAC, Src: topo.WireMAC, SrcIP: netip.MustParseAddr("10.204.0.2"),
		DstIP: netip.MustParseAddr("10.204.0.11"), SrcPort: 4000, DstPort: 5000, Size: 90, Tag: tag}
}

// The red-team corpus as a VM owner meets the daemon: `xdp-hostd prog load`
// against a live daemon, frames from the wire side. Attacks the policy
// refuses come back with the rule; the accepted spoofing attacks put no
// frame on the wire and are counted as spoofed in `vm show`; the measured
// cost of a program shows in `vm show`.
func TestAttacksThroughDaemon(t *testing.T) {
	testnet.RequireRoot(t)
	topo := testnet.Topology(t, 4)
	s, stderr := startDaemon(t, fmt.Sprintf(`{"uplinks": [{"name": %q, "netns": %q, "vms": [%s, %s]}]}`, topo.Uplink, topo.HostNS,
		vmJSON("evil", attackerMAC.String(), "[1]"), vmJSON("victim", "02:00:00:00:77:02", "[2]")))
	for file, rule := range map[string]string{
		"broadcast_miss":    "[redirect-helper]",
		"callback_redirect": "[abi-version]",
		"loop_from_map":     "[cpu-cost]",
		"loop_nested":       "[cpu-cost]",
		"tailcall_chain":    "[cpu-cost]",
		"backedge_loop":     "[cpu-cost]", // by the kernel's count, at load
	} {
		code, _, errs := cli(t, "prog", "load", "--vm", "evil", s, repoFile(t, "redteam/attacks/"+file+".o"))
		if code != 1 || !strings.Contains(errs, rule) {
			t.Errorf("%s: exit %d, want 1 naming %s:\n%s", file, code, rule, errs)
		}
	}
	if code, out, _ := cli(t, "prog", "list", "--json", s); code != 0 || strings.TrimSpace(out) != "[]" {
		t.Fatalf("refused programs left something: %s", out)
	}

	wire := testnet.PacketCounter(t, topo.WireNS, topo.Wire)
	sender := testnet.Sender(t, topo)
	const n = 128
	expect := uint64(1)
	for i, file := range []string{"head_spoof", "tail_short", "tailcall_spoof"} {
		tag := uint16(10 + i)
		code, _, errs := cli(t, "prog", "load", "--vm", "evil", s, repoFile(t, "redteam/attacks/"+file+".o"))
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", file, code, errs)
		}
		before := vmShow(t, s, "evil").Verdicts.Spoofed.Packets
		if err := sender.Send(attackFrames(topo, tag), 1, 0, n); err != nil {
			t.Fatal(err)
		}
		var got uint64
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if got = vmShow(t, s, "evil").Verdicts.Spoofed.Packets - before; got >= n {
				break
			}
		}
		if got != n {
			t.Errorf("%s: %d of %d counted as spoofed", file, got, n)
		}
		if w := wire.Snapshot().ByTag[tag]; w != 0 {
			t.Errorf("%s: %d spoofed frames reached the wire", file, w)
		}
		if code, _, errs := cli(t, "prog", "rm", "--vm", "evil", "--expect", fmt.Sprint(expect), s); code != 0 {
			t.Fatalf("rm: %s", errs)
		}
		expect++
	}
	c := vmShow(t, s, "evil").Cost
	if c.Sampled < 3*n/64 || c.SampledNS == 0 || c.NSPerPacket <= 0 {
		t.Errorf("program cost not measured: %+v", c)
	}
	if !strings.Contains(stderr.String(), "audit=prog_refused") {
		t.Error("no prog_refused audit event")
	}
}

// The budgets of the configuration: a static budget below a program's
// worst case refuses it by rule; a run-time budget that the program
// exceeds (1 ns per packet) swaps it back to the built-in one, audited.
func TestCostBudgetsThroughDaemon(t *testing.T) {
	testnet.RequireRoot(t)
	topo := testnet.Topology(t, 4)
	s, stderr := startDaemon(t, fmt.Sprintf(`{"max_cost_instructions": 200, "max_ns_per_packet": 1, "enforce_ns_per_packet": true,
		"uplinks": [{"name": %q, "netns": %q, "vms": [%s]}]}`, topo.Uplink, topo.HostNS, vmJSON("evil", attackerMAC.String(), "[1]")))
	code, _, errs := cli(t, "prog", "load", "--vm", "evil", s, repoFile(t, "bpf/examples/bridge.o"))
	if code != 1 || !strings.Contains(errs, "[cpu-cost]") || !strings.Contains(errs, "budget of 200") {
		t.Errorf("bridge over a budget of 200: exit %d\n%s", code, errs)
	}
	if code, _, errs := cli(t, "prog", "load", "--vm", "evil", s, repoFile(t, "bpf/guests/counter.o")); code != 0 {
		t.Fatalf("counter: %s", errs)
	}
	sender := testnet.Sender(t, topo)
	swapped := false
	for deadline := time.Now().Add(8 * time.Second); time.Now().Before(deadline) && !swapped; {
		if err := sender.Send(attackFrames(topo, 30), 1, 0, 2000); err != nil {
			t.Fatal(err)
		}
		swapped = vmShow(t, s, "evil").Program == 0
		time.Sleep(50 * time.Millisecond)
	}
	if !swapped {
		t.Fatalf("the program over its run-time budget still runs: %+v", vmShow(t, s, "evil").Cost)
	}
	if !strings.Contains(stderr.String(), "audit=prog_over_budget") {
		t.Errorf("no prog_over_budget audit event:\n%s", stderr.String())
	}
}

// The run-time watch keeps its readings per VM, not per name: a VM removed
// and added again under its name (new counters, lower than the old ones)
// with no traffic is never taken to be over its budget.
func TestCostWatchAcrossReAdd(t *testing.T) {
	testnet.RequireRoot(t)
	topo := testnet.Topology(t, 4)
	s, _ := startDaemon(t, fmt.Sprintf(`{"max_ns_per_packet": 0.5, "enforce_ns_per_packet": true,
		"uplinks": [{"name": %q, "netns": %q, "vms": []}]}`, topo.Uplink, topo.HostNS))
	add := func() {
		t.Helper()
		if code, _, errs := cli(t, "vm", "add", s, "--uplink", topo.Uplink, "--name", "evil", "--mac", attackerMAC.String(), "--queues", "1"); code != 0 {
			t.Fatalf("vm add: %s", errs)
		}
	}
	add()
	// Traffic through the built-in program (never swapped) fills the
	// counters and the watch's last reading.
	sender := testnet.Sender(t, topo)
	for i := 0; i < 3; i++ {
		if err := sender.Send(attackFrames(topo, 40), 1, 0, 2000); err != nil {
			t.Fatal(err)
		}
		time.Sleep(700 * time.Millisecond)
	}
	if vmShow(t, s, "evil").Cost.Sampled < 64 {
		t.Fatal("no packets were timed")
	}
	if code, _, errs := cli(t, "vm", "rm", s, "evil"); code != 0 {
		t.Fatalf("vm rm: %s", errs)
	}
	add()
	if code, _, errs := cli(t, "prog", "load", "--vm", "evil", s, repoFile(t, "bpf/guests/counter.o")); code != 0 {
		t.Fatalf("load: %s", errs)
	}
	time.Sleep(2500 * time.Millisecond) // two windows, no traffic
	if vs := vmShow(t, s, "evil"); vs.Program == 0 {
		t.Errorf("a program with no traffic was taken to be over its budget: %+v", vs.Cost)
	}
}
