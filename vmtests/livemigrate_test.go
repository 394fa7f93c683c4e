package vmtests

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	hostbpf "github.com/xdp-hostd/xdp-hostd/bpf"
	"github.com/xdp-hostd/xdp-hostd/client"
	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/migration"
	"github.com/xdp-hostd/xdp-hostd/nsrun"
	"github.com/xdp-hostd/xdp-hostd/qmp"
	"github.com/xdp-hostd/xdp-hostd/traffic"
	"github.com/xdp-hostd/xdp-hostd/vmtests/vmproto"
)

// Live migration over QMP between two xdp-hostd daemons on one machine, as
// the README's "Live migration" (plain QEMU) runs it: each daemon has its
// own uplink (a veth in its own namespace pair, with its own wire side), the
// source QEMU boots a guest with two vhost-user NICs served by daemon A (a
// VM "migf" running the DDoS filter example, a VM "migc" running the counter
// guest program), the destination QEMU waits with -incoming and NICs served
// by daemon B. 'xdp-hostd migrate' prepares B before QMP 'migrate' and
// carries the programs and their maps with --final once the source stopped
// (--abort when QEMU's migration failed).
//
// A steady UDP stream from the wire side reaches the guest through the
// filter VM's port, on A's wire before the migration completes and on B's
// after (the network would learn the move from the guest's announcement;
// the test switches itself, and checks that B's wire saw the announcement).
//
// First two migrations fail half-way (QMP migrate_cancel; the destination
// QEMU killed): the source runs on with its programs, the stream goes on,
// and B keeps nothing. Then one succeeds: the guest keeps its IP (pings
// through B's wire), the stream continues through B's port (loss is
// measured and logged), a blocked prefix is still dropped on B with its
// drop count going on, the counter's count goes on from A's, the guest's
// agent channel talks to B, and B's wire sees the guest's announcements
// (gratuitous ARPs from the filter NIC; RARPs that B's back-end sends for
// the counter NIC, which hides GUEST_ANNOUNCE from the guest).
// Last, the VM goes back from B's QEMU to a third QEMU on A: A takes back
// the VM it gave away, under new program IDs with both hosts' in their
// history, its maps still going on.
//
// XDP_HOSTD_VMTEST_MIGRATE_UNDER_LOAD=1 streams 5000 datagrams/s instead of
// 500, so that the back-ends write into guest memory all through the
// migration: most overflow the guest's socket buffer, so arrival is not
// checked then, only that nothing arrives twice and the guest goes on.
func TestLiveMigrationQMP(t *testing.T) {
	SkipWithoutQEMU(t)
	testnet.RequireRoot(t)
	const (
		macF, macC = "52:54:00:00:ad:01", "52:54:00:00:ad:02"
		guestIP    = "10.201.0.50"
		blocked    = "10.66.1.1" // in 10.66.0.0/16, the filter's blocked prefix
		nBlocked   = 40
		nCounted   = 30
		// The guest's UDP ports, one per phase of the stream.
		portAborts, portFinal, portAfter, portBlocked = 40101, 40102, 40103, 40104
	)
	start := time.Now()
	bin := hostdBinary(t)
	topoA, topoB := testnet.Topology(t, 2), testnet.Topology(t, 2)
	sockDir := filepath.Dir(TempSocketPath(t, "x"))
	sock := func(name string) string { return filepath.Join(sockDir, name) }
	a := startHostd(t, bin, "A", topoA, sockDir, fmt.Sprintf(`
		{"name": "migf", "mac": %q, "queues": [0], "delivery": "vhost-user", "vhost_user_socket": %q, "agent_socket": %q},
		{"name": "migc", "mac": %q, "queues": [1], "delivery": "vhost-user", "vhost_user_socket": %q}`,
		macF, sock("a-f.sock"), sock("a-ag.sock"), macC, sock("a-c.sock")))
	b := startHostd(t, bin, "B", topoB, sockDir, "")

	// Programs on A: the DDoS filter blocks 10.66.0.0/16, the counter counts.
	a.cli(t, "prog", "load", "--socket", a.api, "--vm", "migf", writeExample(t, true, "ddos_filter"))
	a.cli(t, "prog", "load", "--socket", a.api, "--vm", "migc", writeExample(t, false, "counter"))
	idF := a.program(t, "migf")
	idC := a.program(t, "migc")
	blockPrefix16(t, idF.KernelID, netip.MustParseAddr(blocked))

	srcQMP := sock("qmp-src.sock")
	src := StartT(t, WithMigratableTCGMemory(), WithName("src"), WithQMP(srcQMP), WithXDPHostdAgent(sock("a-ag.sock")),
		WithVhostUserNIC(VhostUserNIC{Socket: sock("a-f.sock"), MAC: macF}),
		WithVhostUserNIC(VhostUserNIC{Socket: sock("a-c.sock"), MAC: macC, NoGuestAnnounce: true}))
	wireIP, _ := netip.AddrFromSlice(topoA.WireIP) // the same on B's wire
	gIP := netip.MustParseAddr(guestIP)
	mF, _ := net.ParseMAC(macF)
	mC, _ := net.ParseMAC(macC)
	// The guest knows the wire's address statically: the wire sends no
	// ARP (its frames are built and put on a chosen queue, so that they
	// reach the filter VM, whose queue is 0, and not the counter VM's).
	if r, err := Call[vmproto.ConfigureResult](src, vmproto.Configure{MAC: macF, Addr: guestIP + "/24",
		Neighbors: []vmproto.Neighbor{{IP: topoA.WireIP.String(), MAC: topoA.WireMAC.String()}}}); err != nil || !r.Carrier {
		t.Fatalf("configure the filter NIC: %+v %v", r, err)
	}
	if r, err := Call[vmproto.ConfigureResult](src, vmproto.Configure{MAC: macC}); err != nil || !r.Carrier {
		t.Fatalf("configure the counter NIC: %+v %v", r, err)
	}
	// Room for the stream in the guest's socket buffers (the guest reads
	// each phase's datagrams only at its end).
	if r, err := Call[vmproto.ExecResult](src, vmproto.Exec{Argv: []string{"sh", "-c", "echo 16777216 > /proc/sys/net/core/rmem_max"}}); err != nil || r.ExitCode != 0 {
		t.Fatalf("raise rmem_max in the guest: %+v %v", r, err)
	}
	for _, p := range []int{portAborts, portFinal, portAfter} {
		if _, err := src.Do(vmproto.UDPListen{Port: p}); err != nil {
			t.Fatal(err)
		}
	}
	// The guest's agent talks to A: its VM, A's program ID.
	if r := agent(t, src, "status"); r.ExitCode != 0 || !strings.Contains(r.Output, "vm: migf") || !strings.Contains(r.Output, fmt.Sprintf("id: %d", idF.ID)) {
		t.Fatalf("the guest agent's status on A: %+v", r)
	}
	wa, wb := newWire(t, topoA), newWire(t, topoB)
	if rtt, err := wa.ping(mF, gIP, 15*time.Second); err != nil {
		t.Fatalf("ping through A before migrating: %v", err)
	} else {
		t.Logf("ping through A: %v", rtt)
	}

	// Map state on A: blocked frames dropped and counted, counted frames.
	wa.sendUDP(t, 0, mF, netip.MustParseAddr(blocked), gIP, portBlocked, "blocked-a", nBlocked)
	wa.sendUDP(t, 1, mC, wireIP, gIP, portBlocked, "counted-a", nCounted)
	var dropsA, countA, globalA uint64
	waitFor(t, "A's filter to drop the blocked frames", 10*time.Second, func() bool {
		dropsA = mapU64At(t, a.export(t, "migf"), "blocked", prefixKey(32, netip.MustParseAddr(blocked)))
		return dropsA >= nBlocked
	})
	waitFor(t, "A's counter to count", 10*time.Second, func() bool {
		doc := a.export(t, "migc")
		countA, globalA = mapU64At(t, doc, "totals", []byte{0, 0, 0, 0}), bssU64(t, doc)
		return countA >= nCounted && globalA >= nCounted
	})
	if dropsA != nBlocked {
		t.Errorf("A's filter counted %d drops from %s, want %d", dropsA, blocked, nBlocked)
	}
	t.Logf("on A: %d frames from %s dropped; the counter is at %d", dropsA, blocked, countA)

	st := startStream(t, wa, mF, wireIP, gIP, portAborts, "aborts")
	waitFor(t, "the stream to start", 5*time.Second, func() bool { return st.sent("aborts") >= 20 })

	waitFor(t, "the source's QMP socket", 20*time.Second, func() bool { _, err := os.Stat(srcQMP); return err == nil })
	qs, err := qmp.Dial(srcQMP, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qs.Close() })

	// attempt prepares B, starts the destination QEMU and migrates to it.
	attempt := func(n int, bandwidth int64) (*VM, *qmp.Client) {
		t.Helper()
		f, c, ag := sock(fmt.Sprintf("b-f%d.sock", n)), sock(fmt.Sprintf("b-c%d.sock", n)), sock(fmt.Sprintf("b-ag%d.sock", n))
		a.cli(t, "migrate", "migf", "--to", b.api, "--socket", a.api, "--uplink", topoB.Uplink, "--queues", "0", "--vhost-user-socket", f, "--agent-socket", ag)
		a.cli(t, "migrate", "migc", "--to", b.api, "--socket", a.api, "--uplink", topoB.Uplink, "--queues", "1", "--vhost-user-socket", c)
		if vs := b.vm(t, "migf"); !vs.Incoming {
			t.Fatalf("B: migf after the prepare: %+v, want incoming", vs)
		}
		migSock, dstQMP := sock(fmt.Sprintf("mig%d.sock", n)), sock(fmt.Sprintf("qmp-dst%d.sock", n))
		dst := StartT(t, WithMigratableTCGMemory(), WithName(fmt.Sprintf("dst%d", n)), WithQMP(dstQMP), WithIncoming("unix:"+migSock), WithXDPHostdAgent(ag),
			WithVhostUserNIC(VhostUserNIC{Socket: f, MAC: macF}),
			WithVhostUserNIC(VhostUserNIC{Socket: c, MAC: macC, NoGuestAnnounce: true}))
		waitFor(t, "the destination's QMP socket", 20*time.Second, func() bool { _, err := os.Stat(dstQMP); return err == nil })
		qd, err := qmp.Dial(dstQMP, 20*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { qd.Close() })
		if s, err := qd.Status(context.Background()); err != nil || s != "inmigrate" {
			t.Fatalf("destination QEMU: status %q, %v; want inmigrate", s, err)
		}
		qmpRun(t, qs, "migrate-set-parameters", map[string]any{"max-bandwidth": bandwidth})
		qmpRun(t, qs, "migrate", map[string]any{"uri": "unix:" + migSock})
		return dst, qd
	}
	// aborted checks a failed migration left the source as it was and
	// nothing on B.
	aborted := func(what string, dst *VM, n int) {
		t.Helper()
		a.cli(t, "migrate", "--abort", "migf", "--to", b.api, "--socket", a.api)
		a.cli(t, "migrate", "--abort", "migc", "--to", b.api, "--socket", a.api)
		if s, err := qs.Status(context.Background()); err != nil || s != "running" {
			t.Errorf("%s: the source VM is %q (%v), want running", what, s, err)
		}
		if vms := b.vms(t); len(vms) != 0 {
			t.Errorf("%s: B keeps VMs: %+v", what, vms)
		}
		if ps := b.programs(t); len(ps) != 0 {
			t.Errorf("%s: B keeps programs: %+v", what, ps)
		}
		for _, f := range []string{sock(fmt.Sprintf("b-f%d.sock", n)), sock(fmt.Sprintf("b-c%d.sock", n)), sock(fmt.Sprintf("b-ag%d.sock", n))} {
			if _, err := os.Stat(f); err == nil {
				t.Errorf("%s: B left its socket %s", what, f)
			}
		}
		for _, n := range []string{"migf", "migc"} {
			vs := a.vm(t, n)
			if vs.Frozen || vs.Program == 0 || !vs.FrontEndConnected {
				t.Errorf("%s: A's %s: %+v, want its program running and QEMU connected", what, n, vs)
			}
		}
		before := a.vm(t, "migf").Verdicts.Drop.Packets
		wa.sendUDP(t, 0, mF, netip.MustParseAddr(blocked), gIP, portBlocked, "blocked-abort", nBlocked)
		waitFor(t, what+": A's filter dropping", 10*time.Second, func() bool { return a.vm(t, "migf").Verdicts.Drop.Packets >= before+nBlocked })
		if _, err := wa.ping(mF, gIP, 10*time.Second); err != nil {
			t.Errorf("%s: ping through A: %v", what, err)
		}
		dst.Kill()
	}
	halfway := func(what string) {
		t.Helper()
		ms := waitMigration(t, qs, 30*time.Second, func(m migStatus) bool { return m.Status == "active" && m.RAM.Transferred > 4<<20 })
		t.Logf("%s: migration %s, %d MiB sent", what, ms.Status, ms.RAM.Transferred>>20)
	}

	// 1. QMP migrate_cancel half-way.
	dst, _ := attempt(1, 16<<20)
	halfway("cancel")
	qmpRun(t, qs, "migrate_cancel", nil)
	if ms := waitMigration(t, qs, 30*time.Second, func(m migStatus) bool { return m.Status == "cancelled" || m.Status == "failed" }); ms.Status != "cancelled" {
		t.Errorf("after migrate_cancel: %+v", ms)
	}
	aborted("migrate_cancel", dst, 1)

	// 2. The destination QEMU killed half-way.
	dst, _ = attempt(2, 16<<20)
	halfway("kill")
	if err := dst.Kill(); err != nil {
		t.Fatal(err)
	}
	if ms := waitMigration(t, qs, 30*time.Second, func(m migStatus) bool { return m.Status == "cancelled" || m.Status == "failed" }); ms.Status != "failed" {
		t.Errorf("after killing the destination: %+v", ms)
	}
	aborted("destination killed", dst, 2)

	// The stream went on through A across both.
	st.retarget(wa, portFinal, "final")
	sentAborts := st.sent("aborts")
	got, err := Call[vmproto.UDPCountResult](src, vmproto.UDPCount{Port: portAborts, Marker: "aborts", Want: sentAborts, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stream across the two failed migrations: %d of %d datagrams arrived (%d lost)", got.Seqs, sentAborts, sentAborts-got.Seqs)
	if got.Matched != got.Seqs {
		t.Errorf("stream across the failed migrations: %d datagrams but %d sequence numbers: some twice", got.Matched, got.Seqs)
	}
	if got.Seqs == 0 {
		t.Errorf("the stream did not reach the guest during the failed migrations")
	}

	// 3. The migration that completes.
	announce := watchAnnounce(t, topoB, mF)
	announceC := watchAnnounce(t, topoB, mC)
	migStart := time.Now()
	dst, qd := attempt(3, 1<<30)
	ms := waitMigration(t, qs, 90*time.Second, func(m migStatus) bool {
		return m.Status == "completed" || m.Status == "failed" || m.Status == "cancelled"
	})
	completed := time.Now()
	if ms.Status != "completed" {
		t.Fatalf("migration: %+v", ms)
	}
	// The network would learn the move now: the stream goes to B's wire.
	st.retarget(wb, portAfter, "after")
	sentFinal := st.sent("final")
	early := announce()
	out := a.cli(t, "migrate", "--final", "migf", "--to", b.api, "--socket", a.api)
	sentBeforeFinal := st.sent("after") // to B before the filter VM's program arrived there
	out += a.cli(t, "migrate", "--final", "migc", "--to", b.api, "--socket", a.api)
	finalDone := time.Now()
	t.Logf("QEMU migrated in %v (QEMU: total %d ms, downtime %d ms, %d MiB); the final steps took %v more:\n%s",
		completed.Sub(migStart).Round(time.Millisecond), ms.TotalTime, ms.Downtime, ms.RAM.Transferred>>20, finalDone.Sub(completed).Round(time.Millisecond), out)
	if s, err := qd.Status(context.Background()); err != nil || s != "running" {
		t.Errorf("the destination VM is %q (%v), want running", s, err)
	}
	if s, err := qs.Status(context.Background()); err != nil || s != "postmigrate" {
		t.Errorf("the source VM is %q (%v), want postmigrate", s, err)
	}

	// The guest kept its address: pings through B's wire.
	if rtt, err := wb.ping(mF, gIP, 15*time.Second); err != nil {
		t.Errorf("ping through B after migrating: %v", err)
	} else {
		t.Logf("ping through B: %v", rtt)
	}
	if vms := a.vms(t); len(vms) != 0 {
		t.Errorf("A still has VMs after the final step: %+v", vms)
	}
	for _, n := range []string{"migf", "migc"} {
		vs := b.vm(t, n)
		if vs.Incoming || vs.Frozen || vs.Program == 0 || !vs.FrontEndConnected {
			t.Errorf("B's %s: %+v, want its program running and QEMU connected", n, vs)
		}
	}
	for _, p := range b.programs(t) {
		want := map[string]uint64{"migf": idF.ID, "migc": idC.ID}[p.VM]
		if len(p.History) != 1 || p.History[0].ID != want || p.History[0].SHA256 != p.SHA256 {
			t.Errorf("B's program %d (VM %s) has history %+v, want its ID on A, %d", p.ID, p.VM, p.History, want)
		}
	}
	b0F := b.program(t, "migf")
	// The guest's agent channel came along: it talks to B now.
	if r := agent(t, dst, "status"); r.ExitCode != 0 || !strings.Contains(r.Output, "vm: migf") ||
		!strings.Contains(r.Output, fmt.Sprintf("id: %d", b.program(t, "migf").ID)) {
		t.Errorf("the guest agent's status after migrating: %+v (want B's program %d)", r, b.program(t, "migf").ID)
	}

	// The filter's prefix is still blocked on B, and its drop count goes on.
	wb.sendUDP(t, 0, mF, netip.MustParseAddr(blocked), gIP, portBlocked, "blocked-b", nBlocked)
	var dropsB uint64
	waitFor(t, "B's filter to drop the blocked frames", 10*time.Second, func() bool {
		dropsB = mapU64At(t, b.export(t, "migf"), "blocked", prefixKey(32, netip.MustParseAddr(blocked)))
		return dropsB >= 3*nBlocked+nBlocked
	})
	if want := uint64(4 * nBlocked); dropsB != want { // on A: once before, once after each failed attempt
		t.Errorf("B's filter counts %d drops from %s, want %d (A's %d and B's %d)", dropsB, blocked, want, 3*nBlocked, nBlocked)
	}
	// The counter goes on from where A left it.
	doc := b.export(t, "migc")
	count0 := mapU64At(t, doc, "totals", []byte{0, 0, 0, 0})
	if globalB := bssU64(t, doc); globalB < globalA {
		t.Errorf("the counter's global variable (.bss) went back: %d on A, %d on B after the migration", globalA, globalB)
	}
	seen0 := b.vm(t, "migc").Verdicts
	wb.sendUDP(t, 1, mC, wireIP, gIP, portBlocked, "counted-b", nCounted)
	var count1 uint64
	waitFor(t, "B's counter to count", 10*time.Second, func() bool {
		count1 = mapU64At(t, b.export(t, "migc"), "totals", []byte{0, 0, 0, 0})
		return count1 >= count0+nCounted
	})
	seen1 := b.vm(t, "migc").Verdicts
	if count0 < countA {
		t.Errorf("the counter went back: %d on A, %d on B after the migration", countA, count0)
	}
	if d, v := count1-count0, seen1.Pass.Packets-seen0.Pass.Packets; d != v {
		t.Errorf("B's counter counted %d frames while B passed %d to the VM", d, v)
	}
	t.Logf("counter: %d on A before migrating (global %d), %d on B after it, %d after %d more frames", countA, globalA, count0, count1, nCounted)

	// The stream went on through B's port.
	time.Sleep(2 * time.Second) // stream after the final step, to measure
	st.stop()
	sentAfter := st.sent("after")
	fin, err := Call[vmproto.UDPCountResult](dst, vmproto.UDPCount{Port: portFinal, Marker: "final", Want: sentFinal, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	aft, err := Call[vmproto.UDPCountResult](dst, vmproto.UDPCount{Port: portAfter, Marker: "after", Want: sentAfter, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	vf := b.vm(t, "migf")
	t.Logf("stream (%d datagrams/s): to A during the migration %d sent, %d arrived (%d lost); to B after QEMU completed %d sent (%d before the filter VM's final step ended), %d arrived (%d lost; B dropped %d before the program arrived); B's filter VM: %+v",
		streamBurst()*int(time.Second/streamTick), sentFinal, fin.Seqs, sentFinal-fin.Seqs, sentAfter, sentBeforeFinal, aft.Seqs, sentAfter-aft.Seqs,
		vf.Verdicts.Drop.Packets-nBlocked, vf.Verdicts)
	if fin.Seqs == 0 {
		t.Error("no datagram of the stream reached the guest during the migration")
	}
	// The destination goes on from the rings' state the source handed
	// over: nothing placed twice.
	for _, r := range []struct {
		what string
		res  vmproto.UDPCountResult
	}{{"to A during the migration", fin}, {"to B after it", aft}} {
		if r.res.Matched != r.res.Seqs {
			t.Errorf("stream %s: the guest got %d datagrams but %d sequence numbers: some twice", r.what, r.res.Matched, r.res.Seqs)
		}
	}
	if after := sentAfter - sentBeforeFinal; aft.Seqs < after*9/10 && !underLoad() {
		t.Errorf("after the final steps %d datagrams went to B, the guest got %d of %d in all", after, aft.Seqs, sentAfter)
	}
	// The counter NIC hides GUEST_ANNOUNCE from the guest: QEMU has B's
	// back-end send RARPs for it (SEND_RARP).
	if an := announceC(); an.RARP == 0 {
		t.Errorf("B's wire saw no RARP from the counter NIC's MAC (guest_announce=off: SEND_RARP): %+v", an)
	} else {
		t.Logf("B's wire saw %d RARP for %s (SEND_RARP), the first %v after QEMU's migration completed", an.RARP, macC, an.First.Sub(completed).Round(time.Millisecond))
	}
	if an := announce(); an.ARP+an.RARP == 0 {
		t.Error("B's wire saw no announcement (RARP or gratuitous ARP) from the guest's MAC after the migration")
	} else {
		// A network that learns from them would switch that much later
		// than this test does (at "completed").
		t.Logf("B's wire saw the guest's announcements from %s: %d ARP, %d RARP (%d before the final steps), the first %v after QEMU's migration completed",
			macF, an.ARP, an.RARP, early.ARP+early.RARP, an.First.Sub(completed).Round(time.Millisecond))
	}

	// 4. And back: A takes the VM it gave away, from B's QEMU.
	fA, cA, agA := sock("a2-f.sock"), sock("a2-c.sock"), sock("a2-ag.sock")
	b.cli(t, "migrate", "migf", "--to", a.api, "--socket", b.api, "--uplink", topoA.Uplink, "--queues", "0", "--vhost-user-socket", fA, "--agent-socket", agA)
	b.cli(t, "migrate", "migc", "--to", a.api, "--socket", b.api, "--uplink", topoA.Uplink, "--queues", "1", "--vhost-user-socket", cA)
	backMig, backQMP := sock("mig-back.sock"), sock("qmp-back.sock")
	back := StartT(t, WithMigratableTCGMemory(), WithName("back"), WithQMP(backQMP), WithIncoming("unix:"+backMig), WithXDPHostdAgent(agA),
		WithVhostUserNIC(VhostUserNIC{Socket: fA, MAC: macF}),
		WithVhostUserNIC(VhostUserNIC{Socket: cA, MAC: macC, NoGuestAnnounce: true}))
	waitFor(t, "the QMP socket of the QEMU back on A", 20*time.Second, func() bool { _, err := os.Stat(backQMP); return err == nil })
	qb, err := qmp.Dial(backQMP, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qb.Close() })
	backStart := time.Now()
	qmpRun(t, qd, "migrate", map[string]any{"uri": "unix:" + backMig})
	if ms := waitMigration(t, qd, 90*time.Second, func(m migStatus) bool {
		return m.Status == "completed" || m.Status == "failed" || m.Status == "cancelled"
	}); ms.Status != "completed" {
		t.Fatalf("migration back to A: %+v", ms)
	}
	b.cli(t, "migrate", "--final", "migf", "--to", a.api, "--socket", b.api)
	b.cli(t, "migrate", "--final", "migc", "--to", a.api, "--socket", b.api)
	t.Logf("back on A after %v", time.Since(backStart).Round(time.Millisecond))
	if s, err := qb.Status(context.Background()); err != nil || s != "running" {
		t.Errorf("the VM back on A is %q (%v), want running", s, err)
	}
	if vms := b.vms(t); len(vms) != 0 {
		t.Errorf("B still has VMs after the VM went back: %+v", vms)
	}
	if _, err := wa.ping(mF, gIP, 15*time.Second); err != nil {
		t.Errorf("ping through A after the VM came back: %v", err)
	}
	idB := b0F.ID
	for _, p := range a.programs(t) {
		first := map[string]uint64{"migf": idF.ID, "migc": idC.ID}[p.VM]
		if len(p.History) != 2 || p.History[0].ID != first || p.History[1].ID == 0 {
			t.Errorf("A's program %d (VM %s) has history %+v, want its IDs on A (%d) and B", p.ID, p.VM, p.History, first)
		}
		if p.ID <= max(idF.ID, idC.ID) {
			t.Errorf("A gave the returning program %d (VM %s) an ID it had used already", p.ID, p.VM)
		}
		if p.VM == "migf" && len(p.History) == 2 && p.History[1].ID != idB {
			t.Errorf("A's program %d: history %+v, want B's ID %d second", p.ID, p.History, idB)
		}
	}
	wa.sendUDP(t, 0, mF, netip.MustParseAddr(blocked), gIP, portBlocked, "blocked-back", nBlocked)
	waitFor(t, "A's filter to drop the blocked frames again", 10*time.Second, func() bool {
		return mapU64At(t, a.export(t, "migf"), "blocked", prefixKey(32, netip.MustParseAddr(blocked))) >= 5*nBlocked
	})
	if n := mapU64At(t, a.export(t, "migf"), "blocked", prefixKey(32, netip.MustParseAddr(blocked))); n != 5*nBlocked {
		t.Errorf("back on A, the filter counts %d drops, want %d", n, 5*nBlocked)
	}
	if n := mapU64At(t, a.export(t, "migc"), "totals", []byte{0, 0, 0, 0}); n < count1 {
		t.Errorf("back on A, the counter is at %d, it was at %d on B", n, count1)
	}
	if r := agent(t, back, "status"); r.ExitCode != 0 || !strings.Contains(r.Output, fmt.Sprintf("id: %d", a.program(t, "migf").ID)) {
		t.Errorf("the guest agent's status back on A: %+v", r)
	}
	t.Logf("whole test: %v", time.Since(start).Round(time.Millisecond))
}

// hostd is one xdp-hostd daemon run from its binary, as an operator would.
type hostd struct {
	name, bin, api string
	log            *testnet.SyncBuffer
}

// hostdBinary builds xdp-hostd for the test.
func hostdBinary(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		skip(t, "this test builds xdp-hostd: it needs the go command")
	}
	bin := filepath.Join(t.TempDir(), "xdp-hostd")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "../cmd/xdp-hostd").CombinedOutput(); err != nil {
		t.Fatalf("build xdp-hostd: %v\n%s", err, out)
	}
	return bin
}

// startHostd runs a daemon on topo's uplink with the VMs given (JSON
// objects), its VM sockets in sockDir, until the test ends.
func startHostd(t *testing.T, bin, name string, topo *hostnet.Topology, sockDir, vms string) *hostd {
	t.Helper()
	dir := t.TempDir()
	h := &hostd{name: name, bin: bin, api: filepath.Join(dir, "api.sock"), log: &testnet.SyncBuffer{}}
	cfg := filepath.Join(dir, "config.json")
	body := fmt.Sprintf(`{"vm_socket_dirs": [%q], "uplinks": [{"name": %q, "netns": %q, "vms": [%s]}]}`, sockDir, topo.Uplink, topo.HostNS, vms)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--config", cfg, "--socket", h.api)
	cmd.Stderr = h.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("daemon %s exit: %v", name, err)
			}
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("daemon %s did not stop within 20 s of SIGTERM", name)
		}
		if t.Failed() {
			t.Logf("daemon %s log:\n%s", name, h.log.String())
		}
	})
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(h.log.String(), "msg=ready"); time.Sleep(50 * time.Millisecond) {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("daemon %s exited: %v\n%s", name, err, h.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon %s not ready within 20 s:\n%s", name, h.log.String())
		}
	}
	return h
}

// cli runs the xdp-hostd command (at most 60 s) and fails the test unless
// it succeeds; it logs the command line and returns its output.
func (h *hostd) cli(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	t.Logf("$ xdp-hostd %s  (%v)\n%s%s", strings.Join(args, " "), time.Since(start).Round(time.Millisecond), stdout.String(), stderr.String())
	if err != nil {
		t.Fatalf("xdp-hostd %s: %v", strings.Join(args, " "), err)
	}
	return stdout.String()
}

func (h *hostd) client() *client.Client { return client.New(h.api) }

func ctx10() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

func (h *hostd) vm(t *testing.T, name string) *daemon.VMStatus {
	t.Helper()
	ctx, cancel := ctx10()
	defer cancel()
	vs, err := h.client().VM(ctx, name)
	if err != nil {
		t.Fatalf("daemon %s: VM %s: %v", h.name, name, err)
	}
	return vs
}

func (h *hostd) vms(t *testing.T) []daemon.VMStatus {
	t.Helper()
	ctx, cancel := ctx10()
	defer cancel()
	vs, err := h.client().VMs(ctx)
	if err != nil {
		t.Fatalf("daemon %s: VMs: %v", h.name, err)
	}
	return vs
}

func (h *hostd) programs(t *testing.T) []daemon.ProgramRecord {
	t.Helper()
	ctx, cancel := ctx10()
	defer cancel()
	ps, err := h.client().Programs(ctx)
	if err != nil {
		t.Fatalf("daemon %s: programs: %v", h.name, err)
	}
	return ps
}

func (h *hostd) program(t *testing.T, vm string) daemon.ProgramRecord {
	t.Helper()
	for _, p := range h.programs(t) {
		if p.VM == vm {
			return p
		}
	}
	t.Fatalf("daemon %s: VM %s has no program", h.name, vm)
	return daemon.ProgramRecord{}
}

// export is the VM's live migration document (its maps as they are).
func (h *hostd) export(t *testing.T, vm string) *migration.Document {
	t.Helper()
	ctx, cancel := ctx10()
	defer cancel()
	_, doc, err := h.client().Export(ctx, vm, false)
	if err != nil {
		t.Fatalf("daemon %s: export %s: %v", h.name, vm, err)
	}
	return doc
}

func writeExample(t *testing.T, example bool, name string) string {
	t.Helper()
	get := hostbpf.Guest
	if example {
		get = hostbpf.Example
	}
	b, err := get(name)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), name+".o")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// prefixKey is the DDoS filter's LPM key.
func prefixKey(bits uint32, addr netip.Addr) []byte {
	a := addr.As4()
	return append(binary.LittleEndian.AppendUint32(nil, bits), a[:]...)
}

// blockPrefix16 puts addr's /16 into the DDoS filter's blocked map of the
// program the kernel knows by kid, as a host fills it (see the example).
func blockPrefix16(t *testing.T, kid uint32, addr netip.Addr) {
	t.Helper()
	if err := testnet.ProgramMap(t, kid, "blocked").Put(prefixKey(16, addr), uint64(0)); err != nil {
		t.Fatal(err)
	}
}

// mapU64At is the 8-byte value at key in a document's map; the filter's
// LPM trie is looked up by longest prefix.
func mapU64At(t *testing.T, doc *migration.Document, name string, key []byte) uint64 {
	t.Helper()
	for _, m := range doc.Maps {
		if m.Name != name {
			continue
		}
		best, val := -1, uint64(0)
		for _, e := range m.Entries {
			if len(e.Value) < 8 {
				continue
			}
			if bytes.Equal(e.Key, key) {
				return binary.LittleEndian.Uint64(e.Value)
			}
			if m.Type == ebpf.LPMTrie.String() && len(e.Key) == 8 && len(key) == 8 {
				bits := int(binary.LittleEndian.Uint32(e.Key))
				p1 := netip.PrefixFrom(netip.AddrFrom4([4]byte(e.Key[4:])), bits)
				if p1.IsValid() && p1.Contains(netip.AddrFrom4([4]byte(key[4:]))) && bits > best {
					best, val = bits, binary.LittleEndian.Uint64(e.Value)
				}
			}
		}
		return val
	}
	t.Fatalf("VM %s: no map %s in the export", doc.VM.Name, name)
	return 0
}

// bssU64 is the first 8 bytes of a document's .bss map (the counter's
// global variable).
func bssU64(t *testing.T, doc *migration.Document) uint64 {
	t.Helper()
	for _, m := range doc.Maps {
		if strings.HasPrefix(m.Name, ".bss") && len(m.Entries) == 1 && len(m.Entries[0].Value) >= 8 {
			return binary.LittleEndian.Uint64(m.Entries[0].Value)
		}
	}
	t.Fatalf("VM %s: no .bss map in the export", doc.VM.Name)
	return 0
}

// wire sends built frames into one topology's wire side, on a chosen
// queue of the uplink; it serializes its users.
type wire struct {
	topo *hostnet.Topology
	mu   sync.Mutex
	s    *traffic.Sender
}

func newWire(t *testing.T, topo *hostnet.Topology) *wire {
	return &wire{topo: topo, s: testnet.Sender(t, topo)}
}

func (w *wire) send(queue int, frames [][]byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.s.SendFrames(queue, frames)
}

// udpFrames builds n datagrams whose payloads read "marker SEQ " from seq0.
func udpFrames(w *wire, dst net.HardwareAddr, srcIP, dstIP netip.Addr, port int, marker string, seq0, n int) [][]byte {
	spec := traffic.FrameSpec{Dst: dst, Src: w.topo.WireMAC, SrcIP: srcIP, DstIP: dstIP, SrcPort: 7100, DstPort: uint16(port), Size: 120}
	frames := make([][]byte, n)
	for i := range frames {
		frames[i] = make([]byte, spec.Size)
		spec.Build(frames[i], uint32(seq0+i))
		copy(frames[i][traffic.HeaderLen:], fmt.Sprintf("%s %d ", marker, seq0+i))
	}
	return frames
}

func (w *wire) sendUDP(t *testing.T, queue int, dst net.HardwareAddr, srcIP, dstIP netip.Addr, port int, marker string, n int) {
	t.Helper()
	if err := w.send(queue, udpFrames(w, dst, srcIP, dstIP, port, marker, 0, n)); err != nil {
		t.Fatal(err)
	}
}

// ping sends ICMP echo requests built on the wire side to dst on queue 0
// and waits for a reply (the wire's stack receives it) until timeout.
func (w *wire) ping(dstMAC net.HardwareAddr, dst netip.Addr, timeout time.Duration) (time.Duration, error) {
	var fd int
	err := nsrun.Do(w.topo.WireNS, func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("raw ICMP socket: %w", err)
	}
	defer unix.Close(fd)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	ident := uint16(os.Getpid()) ^ 0x6d69
	src := w.topo.WireIP.To4()
	d := dst.As4()
	buf := make([]byte, 1500)
	for seq, deadline := uint16(1), time.Now().Add(timeout); time.Now().Before(deadline); seq++ {
		f := make([]byte, 14+20+16)
		copy(f[0:], dstMAC)
		copy(f[6:], w.topo.WireMAC)
		binary.BigEndian.PutUint16(f[12:], 0x0800)
		ip := f[14:34]
		ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_ICMP
		binary.BigEndian.PutUint16(ip[2:], 36)
		copy(ip[12:], src)
		copy(ip[16:], d[:])
		binary.BigEndian.PutUint16(ip[10:], icmpChecksum(ip))
		icmp := f[34:]
		icmp[0] = 8
		binary.BigEndian.PutUint16(icmp[4:], ident)
		binary.BigEndian.PutUint16(icmp[6:], seq)
		binary.BigEndian.PutUint16(icmp[2:], icmpChecksum(icmp))
		sent := time.Now()
		if err := w.send(0, [][]byte{f}); err != nil {
			return 0, err
		}
		for time.Since(sent) < 500*time.Millisecond {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
					continue
				}
				return 0, err
			}
			ihl := int(buf[0]&0xf) * 4
			if n >= ihl+8 && bytes.Equal(buf[12:16], d[:]) && buf[ihl] == 0 &&
				binary.BigEndian.Uint16(buf[ihl+4:]) == ident && binary.BigEndian.Uint16(buf[ihl+6:]) == seq {
				return time.Since(sent), nil
			}
		}
	}
	return 0, fmt.Errorf("no echo reply from %s within %v", dst, timeout)
}

// streamTick is the stream's period; it sends streamBurst() datagrams
// each.
const streamTick = 20 * time.Millisecond

// streamBurst is 10 (500 datagrams/s), or 100 (5000/s, more than the
// guest's socket buffers hold: most are lost) with
// XDP_HOSTD_VMTEST_MIGRATE_UNDER_LOAD=1, for RX writes all through the
// migration.
func streamBurst() int {
	if underLoad() {
		return 100
	}
	return 10
}

func underLoad() bool { return os.Getenv("XDP_HOSTD_VMTEST_MIGRATE_UNDER_LOAD") == "1" }

// stream sends a steady UDP stream, streamBurst datagrams every streamTick,
// to the current target until stopped; each target has its marker and
// counts.
type stream struct {
	dst          net.HardwareAddr
	srcIP, dstIP netip.Addr

	mu     sync.Mutex
	w      *wire
	port   int
	marker string
	counts map[string]int

	burst      int
	quit, done chan struct{}
	once       sync.Once
}

func startStream(t *testing.T, w *wire, dst net.HardwareAddr, srcIP, dstIP netip.Addr, port int, marker string) *stream {
	s := &stream{dst: dst, srcIP: srcIP, dstIP: dstIP, w: w, port: port, marker: marker, counts: map[string]int{}, burst: streamBurst(),
		quit: make(chan struct{}), done: make(chan struct{})}
	go s.run()
	t.Cleanup(s.stop)
	return s
}

func (s *stream) run() {
	defer close(s.done)
	tick := time.NewTicker(streamTick)
	defer tick.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-tick.C:
		}
		s.mu.Lock()
		seq := s.counts[s.marker]
		frames := udpFrames(s.w, s.dst, s.srcIP, s.dstIP, s.port, s.marker, seq, s.burst)
		if s.w.send(0, frames) == nil {
			s.counts[s.marker] += len(frames)
		}
		s.mu.Unlock()
	}
}

// retarget sends the stream from now on through w to port, marked marker.
func (s *stream) retarget(w *wire, port int, marker string) {
	s.mu.Lock()
	s.w, s.port, s.marker = w, port, marker
	s.mu.Unlock()
}

func (s *stream) sent(marker string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[marker]
}

func (s *stream) stop() {
	s.once.Do(func() { close(s.quit) })
	<-s.done
}

// watchAnnounce counts the ARP and RARP frames from mac arriving on the
// wire side of topo (how a migrated guest, or QEMU for it, tells the
// network where it is now) until the test ends; it returns the counts so far.
type announcements struct {
	ARP, RARP int
	First     time.Time // when the first arrived
}

func watchAnnounce(t *testing.T, topo *hostnet.Topology, mac net.HardwareAddr) func() announcements {
	t.Helper()
	f, err := traffic.OpenPacketSocket(topo.WireNS, topo.Wire)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var a announcements
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			f.SetReadDeadline(time.Now().Add(time.Second))
			k, err := f.Read(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			if err != nil {
				return
			}
			if k >= 14 && bytes.Equal(buf[6:12], mac) {
				mu.Lock()
				switch binary.BigEndian.Uint16(buf[12:]) {
				case 0x0806:
					a.ARP++
				case 0x8035:
					a.RARP++
				}
				if a.First.IsZero() && a.ARP+a.RARP > 0 {
					a.First = time.Now()
				}
				mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		f.Close()
		<-done
	})
	return func() announcements {
		mu.Lock()
		defer mu.Unlock()
		return a
	}
}

type migStatus struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
	TotalTime int64  `json:"total-time"`
	Downtime  int64  `json:"downtime"`
	RAM       struct {
		Transferred int64 `json:"transferred"`
	} `json:"ram"`
}

// waitMigration polls query-migrate every 100 ms until done says so, and
// fails the test after timeout.
func waitMigration(t *testing.T, c *qmp.Client, timeout time.Duration, done func(migStatus) bool) migStatus {
	t.Helper()
	var ms migStatus
	for deadline := time.Now().Add(timeout); ; time.Sleep(100 * time.Millisecond) {
		ms = migStatus{}
		qmpRun(t, c, "query-migrate", nil, &ms)
		if done(ms) {
			return ms
		}
		if time.Now().After(deadline) {
			t.Fatalf("migration still %q after %v: %+v", ms.Status, timeout, ms)
		}
	}
}

func qmpRun(t *testing.T, c *qmp.Client, cmd string, args any, out ...any) {
	t.Helper()
	ctx, cancel := ctx10()
	defer cancel()
	var o any
	if len(out) > 0 {
		o = out[0]
	}
	if err := c.Run(ctx, cmd, args, o); err != nil {
		t.Fatalf("QMP %s: %v", cmd, err)
	}
}

// waitFor polls cond every 20 ms for at most d.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
	}
}
