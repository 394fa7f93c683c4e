package redteam

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	hostbpf "github.com/xdp-hostd/xdp-hostd/bpf"
	"github.com/xdp-hostd/xdp-hostd/guestprog"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/traffic"
)

var (
	evilMAC   = net.HardwareAddr{0x02, 0, 0, 0, 0xee, 0x01}
	victimMAC = net.HardwareAddr{0x02, 0, 0, 0, 0x77, 0x02}
)

// bed: an attacker VM on queue 1 with one port of its own (port 1), a
// victim VM on queue 2 with a port of its own that the attacker's table
// does not list. Everything that can receive a frame is counted.
type bed struct {
	topo              *hostnet.Topology
	evil, victim      *hostnet.VM
	sender            *traffic.Sender
	evilTap, vicTap   *traffic.Counter
	wire              *traffic.Counter
	evilPort, vicPort *traffic.Counter
	vicPortIndex      int
}

func newBed(t *testing.T) *bed {
	t.Helper()
	topo := testnet.Topology(t, 4)
	dp, err := hostnet.Open(hostnet.Config{Uplink: topo.Uplink, NetNS: topo.HostNS})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	b := &bed{topo: topo}
	if b.evil, err = dp.AddVM(hostnet.VMSpec{Name: "evil", MAC: evilMAC, Queues: []int{1}}); err != nil {
		t.Fatal(err)
	}
	if b.victim, err = dp.AddVM(hostnet.VMSpec{Name: "victim", MAC: victimMAC, Queues: []int{2}}); err != nil {
		t.Fatal(err)
	}
	host1, wire1, err := topo.AddPortPair(topo.Prefix + "pe")
	if err != nil {
		t.Fatal(err)
	}
	host2, wire2, err := topo.AddPortPair(topo.Prefix + "pv")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.evil.AddPort(1, host1); err != nil {
		t.Fatal(err)
	}
	if err := b.victim.AddPort(1, host2); err != nil {
		t.Fatal(err)
	}
	for _, p := range b.victim.Ports() {
		if p.Number == 1 {
			b.vicPortIndex = p.Ifindex
		}
	}
	if b.vicPortIndex == 0 {
		t.Fatal("victim's port 1 has no ifindex")
	}
	b.evilPort = testnet.PacketCounter(t, topo.WireNS, wire1)
	b.vicPort = testnet.PacketCounter(t, topo.WireNS, wire2)
	b.wire = testnet.PacketCounter(t, topo.WireNS, topo.Wire)
	b.evilTap = testnet.TapCounter(t, b.evil.Tap())
	b.vicTap = testnet.TapCounter(t, b.victim.Tap())
	b.sender = testnet.Sender(t, topo)
	return b
}

// send sends n frames tagged tag to the attacker's MAC on its queue.
func (b *bed) send(t *testing.T, tag uint16, n int) {
	t.Helper()
	spec := traffic.FrameSpec{Dst: evilMAC, Src: b.topo.WireMAC, SrcIP: netip.MustParseAddr("10.203.0.2"),
		DstIP: netip.MustParseAddr("10.203.0.11"), SrcPort: 4000, DstPort: 5000, Size: 90, Tag: tag}
	if err := b.sender.Send(spec, 1, 0, n); err != nil {
		t.Fatal(err)
	}
}

// settle waits until the attacker's counters account for n more frames
// than before (at most 5 s), then 100 ms for stragglers anywhere.
func (b *bed) settle(t *testing.T, before hostnet.Verdicts, n uint64) hostnet.Verdicts {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var v hostnet.Verdicts
	for {
		v = verdicts(t, b.evil)
		if total(v)-total(before) >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	return verdicts(t, b.evil)
}

func total(v hostnet.Verdicts) uint64 {
	return v.Aborted.Packets + v.Drop.Packets + v.Pass.Packets + v.TX.Packets + v.Redirect.Packets +
		v.Invalid.Packets + v.Undelivered.Packets + v.Spoofed.Packets + v.NoPort.Packets
}

func verdicts(t *testing.T, vm *hostnet.VM) hostnet.Verdicts {
	t.Helper()
	v, err := vm.Verdicts()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// round sends frames tagged tag to the attacker, waits until its counters
// account for them, fails the test if any reached a place outside the
// attacker's own reach (the victim's tap and port always; the wire and the
// attacker's own port too when wireToo, portToo), and returns the
// attacker's verdicts before and after.
func (b *bed) round(t *testing.T, tag uint16, wireToo, portToo bool) (before, after hostnet.Verdicts) {
	t.Helper()
	before = verdicts(t, b.evil)
	b.send(t, tag, frames)
	after = b.settle(t, before, frames)
	if l := b.leaks(tag, wireToo, portToo); len(l) > 0 {
		t.Errorf("frames escaped: %v", l)
	}
	return before, after
}

// leaks names every place outside the attacker's own reach that saw frames
// tagged tag.
func (b *bed) leaks(tag uint16, wireToo, portToo bool) []string {
	var out []string
	if n := b.vicTap.Snapshot().ByTag[tag]; n != 0 {
		out = append(out, "victim VM's tap: "+itoa(n))
	}
	if n := b.vicPort.Snapshot().ByTag[tag]; n != 0 {
		out = append(out, "victim's port: "+itoa(n))
	}
	if n := b.wire.Snapshot().ByTag[tag]; wireToo && n != 0 {
		out = append(out, "wire (out of the uplink): "+itoa(n))
	}
	if n := b.evilPort.Snapshot().ByTag[tag]; portToo && n != 0 {
		out = append(out, "attacker's own port: "+itoa(n))
	}
	return out
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

func attack(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("attacks", name+".o"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// load runs the attack through the policy and installs it on the
// attacker's VM.
func (b *bed) load(t *testing.T, name string) {
	t.Helper()
	obj, err := guestprog.Parse(attack(t, name), "")
	if err != nil {
		t.Fatalf("policy refused %s: %v", name, err)
	}
	if _, err := b.evil.SetProgram(obj, name); err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
}

// loadPastPolicy installs an attack the policy refuses, as if the policy had
// a hole: the guest's version 1 port_table becomes a devmap of its own
// (empty: the attack needs none).
func (b *bed) loadPastPolicy(t *testing.T, name string) {
	t.Helper()
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(attack(t, name)))
	if err != nil {
		t.Fatal(err)
	}
	const evil = "evil_ports"
	spec.Maps[evil] = spec.Maps[guestprog.PortTableMap]
	delete(spec.Maps, guestprog.PortTableMap)
	for _, p := range spec.Programs {
		for i, ins := range p.Instructions {
			if ins.IsLoadFromMap() && ins.Reference() == guestprog.PortTableMap {
				p.Instructions[i] = ins.WithReference(evil)
			}
		}
	}
	if _, err := b.evil.SetProgram(&guestprog.Object{Spec: spec, Entry: "prog"}, name+" (past the policy)"); err != nil {
		t.Fatalf("load %s past the policy: %v", name, err)
	}
}

func (b *bed) guestMap(t *testing.T, name string) *ebpf.Map {
	t.Helper()
	m, ok := b.evil.GuestMap(name)
	if !ok {
		t.Fatalf("the attack has no map %s", name)
	}
	return m
}

func macValue(mac net.HardwareAddr) uint64 {
	var v [8]byte
	copy(v[:], mac)
	return binary.LittleEndian.Uint64(v[:])
}

const frames = 100

// The static policy refuses every attack marked "policy" in README.md, each
// under the rule that names what it tried.
func TestPolicyRefusesAttacks(t *testing.T) {
	for name, rules := range map[string][]guestprog.Rule{
		"broadcast_miss":    {guestprog.RuleRedirectHelper, guestprog.RuleABIVersion},
		"callback_redirect": {guestprog.RuleRedirectHelper, guestprog.RuleABIVersion},
		"foreach_redirect":  {guestprog.RuleRedirectHelper, guestprog.RuleABIVersion},
		"loop_from_map":     {guestprog.RuleCost},
		"loop_nested":       {guestprog.RuleCost},
		"foreach_huge":      {guestprog.RuleCost},
		"tailcall_chain":    {guestprog.RuleCost},
	} {
		t.Run(name, func(t *testing.T) {
			r, obj, err := guestprog.Check(attack(t, name), "", guestprog.Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if r.Accepted || obj != nil {
				t.Fatalf("accepted: %+v", r)
			}
			for _, rule := range rules {
				found := false
				for _, v := range r.Violations {
					found = found || v.Rule == rule
				}
				if !found {
					t.Errorf("no [%s] violation in %v", rule, (&guestprog.RefusedError{Report: r}).Error())
				}
			}
		})
	}
}

// Finding 1 of the containment issue: the kernel's per-CPU redirect state,
// poisoned by the guest (a broadcast redirect with a missing key, then a
// failed lookup: "redirect to ifindex K"), is never used. Loaded past the
// policy, from the program, a bpf_loop callback or a for_each callback,
// aimed at the victim's tap and at the victim's port: nothing arrives
// there, and every frame is counted as invalid.
func TestRedirectStateCannotEscape(t *testing.T) {
	b := newBed(t)
	tag := uint16(1)
	for _, name := range []string{"broadcast_miss", "callback_redirect", "foreach_redirect"} {
		for _, target := range []struct {
			what    string
			ifindex int
		}{{"victim tap", b.victim.Tap().Index()}, {"victim port", b.vicPortIndex}} {
			t.Run(name+"/"+target.what, func(t *testing.T) {
				b.loadPastPolicy(t, name)
				if err := b.guestMap(t, "target").Put(uint32(0), uint32(target.ifindex)); err != nil {
					t.Fatal(err)
				}
				before, v := b.round(t, tag, true, true)
				if d := v.Invalid.Packets - before.Invalid.Packets; d != frames {
					t.Errorf("invalid: %d of %d (verdicts %+v)", d, frames, v)
				}
				if d := v.Redirect.Packets - before.Redirect.Packets; d != 0 {
					t.Errorf("%d counted as redirected", d)
				}
			})
			tag++
		}
	}
}

// Finding 2: frames out of the uplink (XDP_TX, port 0, after growing the
// head, after shrinking the tail, from a tail-called program) carry the
// VM's source MAC or are dropped and counted as spoofed. A reflector that
// swaps the addresses (so the source is its own) still works.
func TestSpoofedTransmitDropped(t *testing.T) {
	b := newBed(t)
	tag := uint16(20)
	for _, name := range []string{"tx_spoof", "uplink_spoof", "head_spoof", "tail_short", "tailcall_spoof"} {
		for _, as := range []net.HardwareAddr{victimMAC, b.topo.UplinkMAC} {
			t.Run(name+"/as "+as.String(), func(t *testing.T) {
				b.load(t, name)
				if m, ok := b.evil.GuestMap("victim"); ok {
					if err := m.Put(uint32(0), macValue(as)); err != nil {
						t.Fatal(err)
					}
				}
				before, v := b.round(t, tag, true, true)
				if d := v.Spoofed.Packets - before.Spoofed.Packets; d != frames {
					t.Errorf("spoofed: %d of %d (verdicts %+v)", d, frames, v)
				}
			})
			tag++
		}
	}

	t.Run("reflector", func(t *testing.T) {
		obj, err := hostbpf.Guest("tx")
		if err != nil {
			t.Fatal(err)
		}
		parsed, err := guestprog.Parse(obj, "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.evil.SetProgram(parsed, "tx"); err != nil {
			t.Fatal(err)
		}
		before := verdicts(t, b.evil)
		b.send(t, 99, frames)
		v := b.settle(t, before, frames)
		if got := b.wire.Snapshot().ByTag[99]; got != frames {
			t.Errorf("wire got %d of %d reflected frames", got, frames)
		}
		if d := v.TX.Packets - before.TX.Packets; d != frames {
			t.Errorf("tx: %d of %d", d, frames)
		}
	})
}

// Finding 7 and forged verdicts: a bare XDP_REDIRECT, port verdicts out of
// range or for ports not in the table, values next to the broadcast code and
// negative values never send a frame anywhere and are counted as invalid
// (or no_port); the real port and broadcast verdicts reach only the
// attacker's own port.
func TestForgedVerdicts(t *testing.T) {
	b := newBed(t)
	b.load(t, "verdict_forge")
	vm := b.guestMap(t, "verdict")
	tag := uint16(40)
	for _, tc := range []struct {
		verdict int32
		slot    string
	}{
		{4, "invalid"}, // bare XDP_REDIRECT
		{guestprog.VerdictPort + guestprog.MaxPorts, "invalid"}, // one past the last port
		{guestprog.VerdictPort - 1, "invalid"},
		{guestprog.VerdictPort + 5, "no_port"}, // not in the table
		{guestprog.VerdictPort + 63, "no_port"},
		{guestprog.VerdictBroadcast - 1, "invalid"},
		{guestprog.VerdictBroadcast + 1, "invalid"},
		{-1, "invalid"},
		{-guestprog.VerdictPort, "invalid"},
		{0x7fffffff, "invalid"},
		{guestprog.VerdictPort + 1, "redirect"},  // the attacker's own port 1
		{guestprog.VerdictBroadcast, "redirect"}, // every port but the uplink: its port 1
	} {
		t.Run(strconv.Itoa(int(tc.verdict)), func(t *testing.T) {
			if err := vm.Put(uint32(0), tc.verdict); err != nil {
				t.Fatal(err)
			}
			own := tc.slot == "redirect"
			before, v := b.round(t, tag, true, !own)
			got := map[string]uint64{
				"invalid":  v.Invalid.Packets - before.Invalid.Packets,
				"no_port":  v.NoPort.Packets - before.NoPort.Packets,
				"redirect": v.Redirect.Packets - before.Redirect.Packets,
			}
			if got[tc.slot] != frames {
				t.Errorf("%s: %d of %d (counted %v)", tc.slot, got[tc.slot], frames, got)
			}
			if own {
				deadline := time.Now().Add(2 * time.Second)
				for b.evilPort.Snapshot().ByTag[tag] < frames && time.Now().Before(deadline) {
					time.Sleep(5 * time.Millisecond)
				}
				if n := b.evilPort.Snapshot().ByTag[tag]; n != frames {
					t.Errorf("the attacker's own port got %d of %d", n, frames)
				}
			}
		})
		tag++
	}
}

// Finding 3: the cost the policy computes is what caps and the budget talk
// about, and the kernel's own count bounds loops of backward jumps at load.
func TestCostBudget(t *testing.T) {
	obj, err := hostbpf.Example("bridge")
	if err != nil {
		t.Fatal(err)
	}
	r, _, err := guestprog.Check(obj, "", guestprog.Limits{})
	if err != nil || !r.Accepted {
		t.Fatalf("bridge: %v %+v", err, r)
	}
	if r.Cost.Worst == 0 || r.Cost.Worst > r.Cost.Budget {
		t.Errorf("bridge's worst case %d, budget %d", r.Cost.Worst, r.Cost.Budget)
	}
	// The same object under a budget below its cost is refused by name.
	r, _, _ = guestprog.Check(obj, "", guestprog.Limits{MaxCost: r.Cost.Worst - 1})
	if r.Accepted {
		t.Errorf("accepted over budget: %+v", r.Cost)
	}
	// A loop of backward jumps passes the static model, which cannot bound
	// it, and is refused at load by the kernel's count of its instructions.
	r, parsed, err := guestprog.Check(attack(t, "backedge_loop"), "", guestprog.Limits{})
	if err != nil || !r.Accepted || !r.Cost.Loops {
		t.Fatalf("backedge_loop: %v %+v", err, r)
	}
	b := newBed(t)
	_, err = b.evil.SetProgram(parsed, "backedge_loop")
	var refused *guestprog.RefusedError
	if !errors.As(err, &refused) || refused.Report.Violations[0].Rule != guestprog.RuleCost {
		t.Fatalf("load: %v, want a cpu-cost refusal", err)
	}
	// The built-in program still serves the VM.
	b.send(t, 70, frames)
	deadline := time.Now().Add(5 * time.Second)
	for b.evilTap.Snapshot().ByTag[70] < frames && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := b.evilTap.Snapshot().ByTag[70]; n != frames {
		t.Errorf("after the refusal the VM got %d of %d frames", n, frames)
	}
}

// The frame measures what the guest costs: one packet in 64 is timed.
func TestRunTimeCost(t *testing.T) {
	b := newBed(t)
	b.load(t, "verdict_forge")
	if err := b.guestMap(t, "verdict").Put(uint32(0), int32(1)); err != nil {
		t.Fatal(err)
	}
	before, err := b.evil.Cost()
	if err != nil {
		t.Fatal(err)
	}
	b.send(t, 60, 640)
	b.settle(t, verdicts(t, b.evil), 0)
	after, err := b.evil.Cost()
	if err != nil {
		t.Fatal(err)
	}
	d := after.Sub(before)
	if d.Runs < 640 || d.Sampled < 640/64 || d.Sampled > d.Runs/32 || d.NS == 0 {
		t.Errorf("cost counters %+v", d)
	}
	if ns := d.NSPerPacket(); ns <= 0 || ns > 1e6 {
		t.Errorf("%.0f ns per packet", ns)
	}
}
