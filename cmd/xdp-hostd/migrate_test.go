package main

import (
	"bytes"
	"context"
	binenc "encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"


	hostbpf "github.com/xdp-hostd/xdp-hostd/bpf"
	"github.com/xdp-hostd/xdp-hostd/client"
	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/migration"
	"github.com/xdp-hostd/xdp-hostd/traffic"
)

// migHost is one host of a migration test: its own topology (uplink and
// wire namespaces), a daemon, and taps made as QEMU would make them, with
// a reader on each.
type migHost struct {
	t      *testing.T
	name   string
	topo   *hostnet.Topology
	socket string
	sender *traffic.Sender
	taps   map[string]*traffic.Counter
}

func newMigHost(t *testing.T, name, extraCfg string, taps ...string) *migHost {
	t.Helper()
	h := &migHost{t: t, name: name, topo: testnet.Topology(t, 2), taps: map[string]*traffic.Counter{}}
	for _, tn := range taps {
		tap, err := hostnet.CreateTap(hostnet.TapOptions{Name: tn, NetNS: h.topo.HostNS})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tap.Close() })
		h.taps[tn] = testnet.TapCounter(t, tap)
	}
	sock, _ := startDaemon(t, fmt.Sprintf(`{%s"uplinks": [{"name": %q, "netns": %q, "vms": []}]}`, extraCfg, h.topo.Uplink, h.topo.HostNS))
	h.socket = strings.TrimPrefix(sock, "--socket=")
	h.sender = testnet.Sender(t, h.topo)
	return h
}

func (h *migHost) client() *client.Client { return client.New(h.socket) }

// cli runs the CLI against this host's daemon and fails the test unless it
// exits 0.
func (h *migHost) cli(args ...string) string {
	h.t.Helper()
	full := append([]string{}, args...)
	if args[0] == "migrate" {
		full = append(full, "--socket", h.socket)
	} else { // flags before the operands: after "prog load" and the like
		full = append(append(append([]string{}, args[:2]...), "--socket", h.socket), args[2:]...)
	}
	code, out, errs := cli(h.t, full...)
	if code != 0 {
		h.t.Fatalf("%s: %v: exit %d\n%s%s", h.name, args, code, out, errs)
	}
	return out
}

// send sends n frames from src to the VM with MAC dst, marked with tag.
func (h *migHost) send(dst string, src string, tag uint16, n int) {
	h.t.Helper()
	mac, _ := net.ParseMAC(dst)
	spec := traffic.FrameSpec{Dst: mac, Src: h.topo.WireMAC, SrcIP: netip.MustParseAddr(src), DstIP: netip.MustParseAddr("10.9.9.9"), Size: 100, Tag: tag}
	if err := h.sender.Send(spec, 0, 0, n); err != nil {
		h.t.Fatal(err)
	}
}

// vm is the daemon's view of one VM.
func (h *migHost) vm(name string) *daemon.VMStatus {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	vs, err := h.client().VM(ctx, name)
	if err != nil {
		h.t.Fatalf("%s: VM %s: %v", h.name, name, err)
	}
	return vs
}

// seen waits (at most 5 s) until the VM's program has seen want frames
// (by its verdict counters) and returns how many it saw.
func (h *migHost) seen(vm string, want uint64) uint64 {
	h.t.Helper()
	var got uint64
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		v := h.vm(vm).Verdicts
		got = v.Pass.Packets + v.Drop.Packets + v.Aborted.Packets + v.Invalid.Packets
		if got >= want || time.Now().After(deadline) {
			return got
		}
	}
}

// delivered waits (at most 5 s) until the tap got want frames with tag,
// then a little longer for frames that should not come, and returns the
// count.
func (h *migHost) delivered(tap string, tag uint16, want uint64) uint64 {
	h.t.Helper()
	c := h.taps[tap]
	for deadline := time.Now().Add(5 * time.Second); c.Snapshot().ByTag[tag] < want && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	return c.Snapshot().ByTag[tag]
}

// export reads a VM's migration document (a live export).
func (h *migHost) export(vm string) *migration.Document {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, doc, err := h.client().Export(ctx, vm, false)
	if err != nil {
		h.t.Fatalf("%s: export %s: %v", h.name, vm, err)
	}
	return doc
}

// mapU64 is the 8-byte value at key in a document's map (0 if absent).
func mapU64(t *testing.T, doc *migration.Document, name string, key []byte) uint64 {
	t.Helper()
	for _, m := range doc.Maps {
		if m.Name != name {
			continue
		}
		for _, e := range m.Entries {
			if bytes.Equal(e.Key, key) {
				return binenc.LittleEndian.Uint64(e.Value)
			}
		}
		return 0
	}
	t.Fatalf("VM %s: no map %s in the export", doc.VM.Name, name)
	return 0
}

var (
	zeroKey     = []byte{0, 0, 0, 0}
	blockedKey  = append(binenc.LittleEndian.AppendUint32(nil, 16), 10, 66, 0, 0) // 10.66.0.0/16
	macFilter   = "02:00:00:00:00:0d"
	macCounter  = "02:00:00:00:00:0c"
	blockedAddr = "10.66.1.1"
	allowedAddr = "10.1.1.1"
)

// blockPrefix puts 10.66.0.0/16 into the DDoS filter's blocked map of the
// program the kernel knows by kid (found through the program's maps, as
// the example's comment says a host would fill it).
func blockPrefix(t *testing.T, kid uint32) {
	t.Helper()
	if err := testnet.ProgramMap(t, kid, "blocked").Put(blockedKey, uint64(0)); err != nil {
		t.Fatal(err)
	}
}

func writeObject(t *testing.T, example bool, name string) string {
	t.Helper()
	var b []byte
	var err error
	if example {
		b, err = hostbpf.Example(name)
	} else {
		b, err = hostbpf.Guest(name)
	}
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), name+".o")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// setupSource registers the filter VM (DDoS prefix filter, 10.66.0.0/16
// blocked) and the counter VM on host a, each with a program, and sends
// them traffic: the filter drops 5 frames and delivers 7, the counter
// counts 11.
func setupSource(t *testing.T, a *migHost) (filterID, counterID uint64) {
	t.Helper()
	a.cli("vm", "add", "--uplink", a.topo.Uplink, "--name", "filter", "--mac", macFilter, "--tap", "qemuf")
	a.cli("vm", "add", "--uplink", a.topo.Uplink, "--name", "counter", "--mac", macCounter, "--tap", "qemuc")
	a.cli("prog", "load", "--vm", "filter", writeObject(t, true, "ddos_filter"))
	a.cli("prog", "load", "--vm", "counter", writeObject(t, false, "counter"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	progs, err := a.client().Programs(ctx)
	if err != nil || len(progs) != 2 {
		t.Fatalf("programs on a: %v %+v", err, progs)
	}
	for _, p := range progs {
		switch p.VM {
		case "filter":
			filterID = p.ID
			blockPrefix(t, p.KernelID)
		case "counter":
			counterID = p.ID
		}
	}
	a.send(macFilter, blockedAddr, 1, 5)
	a.send(macFilter, allowedAddr, 2, 7)
	a.send(macCounter, allowedAddr, 3, 11)
	if got := a.delivered("qemuf", 2, 7); got != 7 {
		t.Fatalf("a: the filter VM got %d of 7 allowed frames", got)
	}
	if got := a.delivered("qemuc", 3, 11); got != 11 {
		t.Fatalf("a: the counter VM got %d of 11 frames", got)
	}
	if got := a.seen("filter", 12); got != 12 {
		t.Fatalf("a: the filter saw %d of 12 frames", got)
	}
	if got := a.taps["qemuf"].Snapshot().ByTag[1]; got != 0 {
		t.Fatalf("a: %d blocked frames reached the filter VM", got)
	}
	return filterID, counterID
}

// A VM's registration, program and map contents move from daemon a to
// daemon b (each on its own uplink in its own namespaces): prepare, then
// final. On b the DDoS filter still drops the blocked prefix and its
// per-prefix count goes on from a's; the counter's map and .bss go on
// from a's, including frames counted on a after the prepare (the final
// copy). Program IDs are b's own, with a's in the history. An aborted
// migration and a final import that fails half-way leave a's VM running
// its program, counting on, and nothing on b.
func TestMigrateProgramAndMaps(t *testing.T) {
	testnet.RequireRoot(t)
	a := newMigHost(t, "a", "", "qemuf", "qemuc")
	b := newMigHost(t, "b", "", "qemuf", "qemuc")
	filterID, counterID := setupSource(t, a)
	to := []string{"--to", b.socket, "--uplink", b.topo.Uplink}

	// Prepare the filter: b has it closed (drops its frames), a runs it.
	out := a.cli(append([]string{"migrate", "filter", "--tap", "qemuf"}, to...)...)
	if !strings.Contains(out, "prepared") || !strings.Contains(out, "migrate --final filter") {
		t.Errorf("prepare says:\n%s", out)
	}
	if vs := b.vm("filter"); !vs.Incoming || vs.Program != 0 {
		t.Fatalf("b after prepare: %+v", vs)
	}
	b.send(macFilter, allowedAddr, 10, 4)
	if v := b.seen("filter", 4); v != 4 || b.vm("filter").Verdicts.Drop.Packets != 4 {
		t.Errorf("b: the incoming VM saw %d frames, verdicts %+v; want 4 dropped", v, b.vm("filter").Verdicts)
	}
	if got := b.taps["qemuf"].Snapshot().ByTag[10]; got != 0 {
		t.Errorf("b: %d frames reached the incoming VM", got)
	}

	// Final: a freezes and removes it; b runs it with a's prefixes and counts.
	start := time.Now()
	out = a.cli(append([]string{"migrate", "--final", "filter", "--tap", "qemuf"}, to...)...)
	t.Logf("final step of the filter (CLI start to exit: freeze, export, import, attach, remove on a): %v", time.Since(start))
	if !strings.Contains(out, fmt.Sprintf("it was program %d here", filterID)) {
		t.Errorf("final says:\n%s", out)
	}
	if code, _, errs := cli(t, "vm", "show", "--socket", a.socket, "filter"); code == 0 || !strings.Contains(errs, "no such VM") {
		t.Errorf("a still has the filter VM after the final step: exit %d %s", code, errs)
	}
	vs := b.vm("filter")
	if vs.Incoming || vs.Program == 0 {
		t.Fatalf("b after final: %+v", vs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec, err := b.client().Program(ctx, vs.Program)
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.History) != 1 || rec.History[0].ID != filterID || rec.History[0].SHA256 != rec.SHA256 {
		t.Errorf("b's record of the filter: history %+v, want a's ID %d and the same SHA-256", rec.History, filterID)
	}
	if hits := mapU64(t, b.export("filter"), "blocked", blockedKey); hits != 5 {
		t.Errorf("b: blocked count %d right after the migration, want a's 5", hits)
	}
	b.send(macFilter, blockedAddr, 11, 3)
	b.send(macFilter, allowedAddr, 12, 6)
	if got := b.delivered("qemuf", 12, 6); got != 6 {
		t.Errorf("b: the filter VM got %d of 6 allowed frames", got)
	}
	b.seen("filter", 4+9)
	if got := b.taps["qemuf"].Snapshot().ByTag[11]; got != 0 {
		t.Errorf("b: %d blocked frames reached the filter VM", got)
	}
	if hits := mapU64(t, b.export("filter"), "blocked", blockedKey); hits != 8 {
		t.Errorf("b: blocked count %d, want 5 from a + 3", hits)
	}

	// An aborted migration of the counter: b keeps nothing, a counts on.
	a.cli(append([]string{"migrate", "counter", "--tap", "qemuc"}, to...)...)
	if b.vm("counter").Incoming != true {
		t.Fatal("b: the counter is not incoming after prepare")
	}
	a.cli(append([]string{"migrate", "--abort", "counter"}, to...)...)
	if code, _, _ := cli(t, "vm", "show", "--socket", b.socket, "counter"); code == 0 {
		t.Error("b still has the counter VM after the abort")
	}
	a.send(macCounter, allowedAddr, 4, 13) // written during the migration
	if got := a.delivered("qemuc", 4, 13); got != 13 {
		t.Errorf("a: after the abort the counter VM got %d of 13 frames", got)
	}
	if n := mapU64(t, a.export("counter"), "totals", zeroKey); n != 24 {
		t.Errorf("a: counter totals %d after the abort, want 11+13", n)
	}

	// A final step that fails half-way (b cannot register the VM: queue
	// out of range): a is thawed and counts on, b keeps nothing.
	code, _, errs := cli(t, append([]string{"migrate", "--final", "counter", "--tap", "qemuc", "--queues", "7", "--socket", a.socket}, to...)...)
	t.Logf("failing final: %s", errs)
	if code != 1 || !strings.Contains(errs, "queue 7") || !strings.Contains(errs, "runs here again") {
		t.Errorf("failing final: exit %d\n%s", code, errs)
	}
	if vs := a.vm("counter"); vs.Frozen || vs.Program != counterID {
		t.Errorf("a after a failed final: %+v", vs)
	}
	if code, _, _ := cli(t, "vm", "show", "--socket", b.socket, "counter"); code == 0 {
		t.Error("b has the counter VM after a failed final step")
	}
	a.send(macCounter, allowedAddr, 5, 2)
	if got := a.delivered("qemuc", 5, 2); got != 2 {
		t.Errorf("a: after the failed final the counter VM got %d of 2 frames", got)
	}

	// The counter moves in one final step (no prepare): 26 counted on a.
	// Kept on a (--keep-source), it stays frozen there: it drops its
	// frames and its maps no longer change.
	a.cli(append([]string{"migrate", "--final", "--keep-source", "counter", "--tap", "qemuc"}, to...)...)
	if vs := a.vm("counter"); !vs.Frozen {
		t.Errorf("a: the counter kept after the final step is not frozen: %+v", vs)
	}
	a.send(macCounter, allowedAddr, 7, 5)
	if v := a.seen("counter", 26+5); v != 31 || a.taps["qemuc"].Snapshot().ByTag[7] != 0 {
		t.Errorf("a: the frozen counter VM: %d frames seen (want 31), %d delivered (want 0)", v, a.taps["qemuc"].Snapshot().ByTag[7])
	}
	if n := mapU64(t, a.export("counter"), "totals", zeroKey); n != 26 {
		t.Errorf("a: the frozen counter counted on: %d, want 26", n)
	}
	a.cli("vm", "rm", "counter")
	doc := b.export("counter")
	if n, s := mapU64(t, doc, "totals", zeroKey), mapU64(t, doc, ".bss", zeroKey); n != 26 || s != 26 {
		t.Errorf("b: counter totals %d, seen %d right after the migration; want a's 26", n, s)
	}
	b.send(macCounter, allowedAddr, 6, 9)
	if got := b.delivered("qemuc", 6, 9); got != 9 {
		t.Errorf("b: the counter VM got %d of 9 frames", got)
	}
	b.seen("counter", 9)
	doc = b.export("counter")
	if n, s := mapU64(t, doc, "totals", zeroKey), mapU64(t, doc, ".bss", zeroKey); n != 35 || s != 35 {
		t.Errorf("b: counter totals %d, seen %d; want 26 from a + 9", n, s)
	}
	if doc.Program == nil || len(doc.Program.History) != 1 || doc.Program.History[0].ID != counterID {
		t.Errorf("b's export of the counter: history %+v, want a's ID %d", doc.Program, counterID)
	}
	if vms := a.cli("vm", "list", "--json"); strings.TrimSpace(vms) != "[]" {
		t.Errorf("a keeps VMs after both migrations: %s", vms)
	}
}

// A program b's policy refuses (a cost budget below the program's) is
// refused at the prepare step and at a final step without prepare, with
// the rule named; b keeps nothing and a's VM runs on, unfrozen.
func TestMigrateRefusedByPolicy(t *testing.T) {
	testnet.RequireRoot(t)
	a := newMigHost(t, "a", "", "qemuf", "qemuc")
	b := newMigHost(t, "b", `"max_cost_instructions": 5, `, "qemuf", "qemuc")
	setupSource(t, a)
	to := []string{"--to", b.socket, "--uplink", b.topo.Uplink, "--tap", "qemuf", "--socket", a.socket}
	for _, final := range []bool{false, true} {
		args := []string{"migrate", "filter"}
		if final {
			args = append(args, "--final")
		}
		code, _, errs := cli(t, append(args, to...)...)
		t.Logf("final=%v: %s", final, errs)
		if code != 1 || !strings.Contains(errs, "cost") {
			t.Errorf("final=%v: exit %d, want a refusal naming the cost rule:\n%s", final, code, errs)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		vms, err := b.client().VMs(ctx)
		progs, perr := b.client().Programs(ctx)
		cancel()
		if err != nil || perr != nil || len(vms) != 0 || len(progs) != 0 {
			t.Errorf("final=%v: b keeps %+v %+v (%v %v)", final, vms, progs, err, perr)
		}
		if vs := a.vm("filter"); vs.Frozen || vs.Program == 0 {
			t.Errorf("final=%v: a's VM: %+v", final, vs)
		}
	}
	// A document of another version is refused by the daemon (400) and
	// by the CLI before it sends it, each naming the versions.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	raw, _, err := a.client().Export(ctx, "filter", false)
	if err != nil {
		t.Fatal(err)
	}
	v2 := bytes.Replace(raw, []byte(`"version":1`), []byte(`"version":2`), 1)
	_, err = b.client().Import(ctx, daemon.ImportRequest{Document: v2})
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Status != 400 || !strings.Contains(err.Error(), "version 2; this xdp-hostd reads version 1") {
		t.Errorf("import of a version 2 document: %v", err)
	}
	file := filepath.Join(t.TempDir(), "v2.json")
	os.WriteFile(file, v2, 0o644)
	if code, _, errs := cli(t, "migrate", "import", "--socket", b.socket, file); code != 1 || !strings.Contains(errs, "version 2") {
		t.Errorf("migrate import of a version 2 file: exit %d %s", code, errs)
	}
	if vms, err := b.client().VMs(ctx); err != nil || len(vms) != 0 {
		t.Errorf("b keeps %+v (%v)", vms, err)
	}
	a.send(macFilter, blockedAddr, 20, 2)
	a.send(macFilter, allowedAddr, 21, 3)
	if got := a.delivered("qemuf", 21, 3); got != 3 || a.taps["qemuf"].Snapshot().ByTag[20] != 0 {
		t.Errorf("a after the refusals: %d of 3 allowed frames, %d blocked ones", got, a.taps["qemuf"].Snapshot().ByTag[20])
	}
}

// sortedMaps is a document's maps as JSON, entries of keyed maps sorted by
// key (a hash map's order differs between two maps with the same content).
func sortedMaps(t *testing.T, doc *migration.Document) string {
	t.Helper()
	ms := append([]migration.Map(nil), doc.Maps...)
	for i := range ms {
		es := append([]migration.Entry(nil), ms[i].Entries...)
		sort.Slice(es, func(a, b int) bool { return bytes.Compare(es[a].Key, es[b].Key) < 0 })
		ms[i].Entries = es
	}
	b, err := json.MarshalIndent(ms, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Every map kind the policy allows and a document carries (hash, LRU
// hash, per-CPU array, per-CPU hash, per-CPU LRU hash, queue, stack; the
// LPM trie is the DDoS filter's) arrives on b as it was on a, per-CPU
// values CPU by CPU (same CPU count), the queue and stack in order, and
// the program goes on writing them there.
func TestMigrateEveryMapKind(t *testing.T) {
	testnet.RequireRoot(t)
	a := newMigHost(t, "a", "", "qemuk")
	b := newMigHost(t, "b", "", "qemuk")
	const mac = "02:00:00:00:00:0e"
	a.cli("vm", "add", "--uplink", a.topo.Uplink, "--name", "kinds", "--mac", mac, "--tap", "qemuk")
	a.cli("prog", "load", "--vm", "kinds", writeObject(t, false, "mapkinds"))
	a.send(mac, "10.1.1.1", 1, 4)
	a.send(mac, "10.2.2.2", 2, 3)
	if got := a.delivered("qemuk", 2, 3) + a.taps["qemuk"].Snapshot().ByTag[1]; got != 7 {
		t.Fatalf("a: the VM got %d of 7 frames", got)
	}
	before := a.export("kinds")
	kinds := map[string]bool{}
	for _, m := range before.Maps {
		kinds[m.Type] = len(m.Entries) > 0
	}
	for _, k := range []string{"Hash", "LRUHash", "PerCPUArray", "PerCPUHash", "LRUCPUHash", "Queue", "Stack"} {
		if !kinds[k] {
			t.Errorf("a's export has no filled map of type %s: %v", k, kinds)
		}
	}
	a.cli("migrate", "--final", "kinds", "--to", b.socket, "--uplink", b.topo.Uplink, "--tap", "qemuk")
	after := b.export("kinds")
	if x, y := sortedMaps(t, before), sortedMaps(t, after); x != y {
		t.Errorf("maps differ after the migration:\na: %s\nb: %s", x, y)
	}
	b.send(mac, "10.3.3.3", 3, 2)
	if got := b.delivered("qemuk", 3, 2); got != 2 {
		t.Fatalf("b: the VM got %d of 2 frames", got)
	}
	b.seen("kinds", 2)
	doc := b.export("kinds")
	for _, m := range doc.Maps {
		switch m.Name {
		case "frames_pc":
			var sum uint64
			for _, v := range m.Entries[0].PerCPU {
				sum += binenc.LittleEndian.Uint64(v)
			}
			if sum != 9 {
				t.Errorf("frames_pc sums to %d over CPUs, want 7 from a + 2", sum)
			}
		case "by_src", "by_src_lru":
			if len(m.Entries) != 3 {
				t.Errorf("%s: %d sources, want 3", m.Name, len(m.Entries))
			}
		case "recent_q":
			var got []byte
			for _, e := range m.Entries {
				got = append(got, e.Value[3])
			}
			if !bytes.Equal(got, []byte{2, 2, 3, 3}) { // the last four sources, oldest first
				t.Errorf("recent_q: last bytes of sources %v, want [2 2 3 3]", got)
			}
		case "recent_s":
			var got []byte
			for _, e := range m.Entries {
				got = append(got, e.Value[3])
			}
			if !bytes.Equal(got, []byte{3, 3, 2, 2}) { // newest first
				t.Errorf("recent_s: last bytes of sources %v, want [3 3 2 2]", got)
			}
		}
	}

	// A source with one CPU more than this host: each per-CPU entry
	// arrives as its sum over the source's CPUs, on CPU 0, zeros elsewhere.
	sums := map[string]uint64{}
	for i := range doc.Maps {
		m := &doc.Maps[i]
		if m.CPUs == 0 {
			continue
		}
		m.CPUs++
		for j := range m.Entries {
			e := &m.Entries[j]
			e.PerCPU = append(e.PerCPU, binenc.LittleEndian.AppendUint64(nil, 100))
			for _, v := range e.PerCPU {
				sums[m.Name+string(e.Key)] += binenc.LittleEndian.Uint64(v)
			}
		}
	}
	raw, err := doc.Encode()
	if err != nil {
		t.Fatal(err)
	}
	b.cli("vm", "rm", "kinds")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.client().Import(ctx, daemon.ImportRequest{Document: raw, Final: true, Tap: "qemuk"}); err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, m := range b.export("kinds").Maps {
		for _, e := range m.Entries {
			if m.CPUs == 0 {
				continue
			}
			checked++
			if got := binenc.LittleEndian.Uint64(e.PerCPU[0]); got != sums[m.Name+string(e.Key)] {
				t.Errorf("%s[%x]: CPU 0 has %d, want the sum %d", m.Name, []byte(e.Key), got, sums[m.Name+string(e.Key)])
			}
			for c, v := range e.PerCPU[1:] {
				if binenc.LittleEndian.Uint64(v) != 0 {
					t.Errorf("%s[%x]: CPU %d has %d, want 0", m.Name, []byte(e.Key), c+1, binenc.LittleEndian.Uint64(v))
				}
			}
		}
	}
	if checked != 1+3+3 { // frames_pc, and three sources in each per-CPU hash
		t.Errorf("checked %d per-CPU entries, want 7", checked)
	}
}

// A vhost-user VM moves to b with b's socket (b serves it from the prepare
// step on, for QEMU's -incoming); b's saved state leaves the arriving VM
// out until the final step, then has it with its program's history, which
// a restart of b brings back under the same ID.
func TestMigrateVhostUserAndState(t *testing.T) {
	testnet.RequireRoot(t)
	dirA, dirB, state := t.TempDir(), t.TempDir(), filepath.Join(t.TempDir(), "state")
	a := newMigHost(t, "a", fmt.Sprintf(`"vm_socket_dirs": [%q], `, dirA))
	topoB := testnet.Topology(t, 2)
	cfgB := fmt.Sprintf(`{"state_dir": %q, "vm_socket_dirs": [%q], "uplinks": [{"name": %q, "netns": %q, "vms": []}]}`, state, dirB, topoB.Uplink, topoB.HostNS)
	var pb *daemonProc
	startB := func() *migHost {
		pb = runDaemonBinary(t, cfgB)
		return &migHost{t: t, name: "b", topo: topoB, socket: pb.socket}
	}
	t.Cleanup(func() {
		if pb != nil {
			pb.stop(t)
		}
	})
	b := startB()
	const mac = "02:00:00:00:00:0f"
	a.cli("vm", "add", "--uplink", a.topo.Uplink, "--name", "nfv", "--mac", mac, "--queues", "1", "--delivery", "vhost-user", "--vhost-user-socket", filepath.Join(dirA, "nfv.sock"))
	a.cli("prog", "load", "--vm", "nfv", writeObject(t, false, "counter"))
	srcID := a.vm("nfv").Program
	savedVMs := func() string {
		b, err := os.ReadFile(filepath.Join(state, "state.json"))
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		return string(b)
	}
	to := []string{"--to", b.socket, "--uplink", topoB.Uplink, "--vhost-user-socket", filepath.Join(dirB, "nfv.sock")}
	a.cli(append([]string{"migrate", "nfv"}, to...)...)
	vs := b.vm("nfv")
	if !vs.Incoming || vs.Delivery != "vhost-user" || vs.VhostUserSocket != filepath.Join(dirB, "nfv.sock") || len(vs.Queues) != 1 || vs.Queues[0] != 1 {
		t.Fatalf("b after prepare: %+v", vs)
	}
	if fi, err := os.Stat(vs.VhostUserSocket); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("b does not serve the arriving VM's vhost-user socket: %v", err)
	}
	if s := savedVMs(); strings.Contains(s, "nfv") {
		t.Errorf("b's saved state has the arriving VM before the final step:\n%s", s)
	}
	a.cli(append([]string{"migrate", "--final", "nfv"}, to...)...)
	id := b.vm("nfv").Program
	if s := savedVMs(); !strings.Contains(s, `"nfv"`) || !strings.Contains(s, fmt.Sprintf(`"id": %d`, srcID)) {
		t.Errorf("b's saved state after the final step lacks the VM or its history:\n%s", s)
	}
	if err := pb.stop(t); err != nil {
		t.Fatalf("b: %v\n%s", err, pb.stderr.String())
	}
	pb = nil
	b = startB()
	vs = b.vm("nfv")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec, err := b.client().Program(ctx, id)
	if err != nil || vs.Incoming || vs.Program != id || len(rec.History) != 1 || rec.History[0].ID != srcID {
		t.Errorf("b after a restart: VM %+v, program %+v (%v); want program %d with a's ID %d in its history", vs, rec, err, id, srcID)
	}
}
