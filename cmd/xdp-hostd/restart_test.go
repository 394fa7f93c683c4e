package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	hostbpf "github.com/xdp-hostd/xdp-hostd/bpf"
	"github.com/xdp-hostd/xdp-hostd/client"
	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/traffic"
)

// restartBed is a daemon configuration with pins and state that the test
// starts, stops and kills again and again: vm1 on a tap the test made (as
// QEMU would), two interfaces for its port table.
type restartBed struct {
	t      *testing.T
	topo   *hostnet.Topology
	dir    string
	cfg    string
	socket string
	pins   string
	state  string
	tap    *hostnet.Tap
	reader *traffic.Counter
	ports  []string
	proc   *daemonProc
	sender *traffic.Sender
	ns     *hostnet.NSRunner // the host namespace
}

func newRestartBed(t *testing.T) *restartBed {
	testnet.RequireRoot(t)
	b := &restartBed{t: t, topo: testnet.Topology(t, 4), dir: t.TempDir(), pins: t.TempDir()}
	b.ns = testnet.Runner(t, b.topo.HostNS)
	t.Cleanup(func() { unix.Unmount(b.pins, unix.MNT_DETACH) })
	b.state = filepath.Join(b.dir, "state")
	b.socket = filepath.Join(b.dir, "api.sock")
	b.cfg = filepath.Join(b.dir, "config.json")
	var err error
	if b.tap, err = hostnet.CreateTap(hostnet.TapOptions{Name: "qemu0", NetNS: b.topo.HostNS}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.tap.Close() })
	b.reader = testnet.TapCounter(t, b.tap)
	for _, n := range []string{"p1", "p2"} {
		name := b.topo.Prefix + n
		if _, _, err := b.topo.AddPortPair(name); err != nil {
			t.Fatal(err)
		}
		b.ports = append(b.ports, name)
	}
	cfg := fmt.Sprintf(`{"pin_dir": %q, "state_dir": %q, "uplinks": [{"name": %q, "netns": %q, "vms": [{"name": "vm1", "mac": "02:00:00:00:00:01", "queues": [1], "tap": "qemu0"}]}]}`,
		b.pins, b.state, b.topo.Uplink, b.topo.HostNS)
	os.WriteFile(b.cfg, []byte(cfg), 0o644)
	t.Cleanup(func() {
		if b.proc != nil {
			b.proc.cmd.Process.Kill()
			b.proc.cmd.Wait()
		}
		// Whatever happened, leave no dataplane behind.
		cli(t, "down", "--config", b.cfg, "--socket", b.socket)
	})
	return b
}

// start runs the daemon and waits until it is ready (at most 20 s).
func (b *restartBed) start() {
	b.t.Helper()
	p := &daemonProc{socket: b.socket, stderr: &syncBuffer{}}
	p.cmd = exec.Command(binary, "run", "--config", b.cfg, "--socket", b.socket)
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	b.proc = p
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(p.stderr.String(), "msg=ready"); {
		if time.Now().After(deadline) || p.cmd.ProcessState != nil {
			p.cmd.Process.Kill()
			p.cmd.Wait()
			b.proc = nil
			b.t.Fatalf("daemon not ready:\n%s", p.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (b *restartBed) kill() {
	b.t.Helper()
	b.proc.cmd.Process.Kill()
	b.proc.cmd.Wait()
	b.proc = nil
}

func (b *restartBed) stop() {
	b.t.Helper()
	if err := b.proc.stop(b.t); err != nil {
		b.t.Fatalf("daemon exit: %v\n%s", err, b.proc.stderr.String())
	}
	b.proc = nil
}

// deliver sends n frames to vm1 and checks its tap got them.
func (b *restartBed) deliver(what string, tag uint16, n int) {
	b.t.Helper()
	spec := traffic.FrameSpec{Dst: net.HardwareAddr{2, 0, 0, 0, 0, 1}, Src: b.topo.WireMAC, Size: 100, Tag: tag}
	before := b.reader.Snapshot().ByTag[tag]
	if b.sender == nil {
		b.sender = testnet.Sender(b.t, b.topo)
	}
	if err := b.sender.Send(spec, 1, 0, n); err != nil {
		b.t.Fatal(err)
	}
	want := before + uint64(n)
	for deadline := time.Now().Add(5 * time.Second); b.reader.Snapshot().ByTag[tag] < want && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if got := b.reader.Snapshot().ByTag[tag] - before; got != uint64(n) {
		b.t.Errorf("%s: vm1 got %d of %d frames", what, got, n)
	}
}

// view is what the daemon reports that must survive a restart.
type view struct {
	VMs      []vmView
	Programs []progView
}

type vmView struct {
	Name, MAC, Delivery, Tap string
	Queues                   []int
	Program                  uint64
	Ports                    []hostnet.Port
}

type progView struct {
	ID                uint64
	VM, SHA256, Entry string
	LoadedAt          time.Time
}

func (b *restartBed) view() view {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := client.New(b.socket)
	vms, err := c.VMs(ctx)
	if err != nil {
		b.t.Fatal(err)
	}
	progs, err := c.Programs(ctx)
	if err != nil {
		b.t.Fatal(err)
	}
	var v view
	for _, vm := range vms {
		v.VMs = append(v.VMs, vmView{vm.Name, vm.MAC, vm.Delivery, vm.Tap, vm.Queues, vm.Program, vm.Ports})
	}
	for _, p := range progs {
		v.Programs = append(v.Programs, progView{p.ID, p.VM, p.SHA256, p.Entry, p.LoadedAt})
	}
	return v
}

// counted reads what the counter guest program with daemon ID id has
// counted, from its pinned maps: totals[0] and its .bss variable.
func (b *restartBed) counted(id uint64) (totals, seen uint64) {
	b.t.Helper()
	dirs, _ := filepath.Glob(filepath.Join(b.pins, b.topo.Uplink, fmt.Sprintf("guest-*-p%d", id)))
	if len(dirs) != 1 {
		b.t.Fatalf("pinned maps of program %d: %v, want one directory", id, dirs)
	}
	for name, v := range map[string]*uint64{"totals": &totals, "-bss": &seen} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dirs[0], name), nil)
		if err != nil {
			b.t.Fatal(err)
		}
		err = m.Lookup(uint32(0), v)
		m.Close()
		if err != nil {
			b.t.Fatalf("%s of program %d: %v", name, id, err)
		}
	}
	return totals, seen
}

func guestObj(t *testing.T, name string) []byte {
	t.Helper()
	b, err := hostbpf.Guest(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Stopping the daemon (SIGTERM or SIGKILL) does not stop forwarding; a
// restart reports the same VMs, ports, programs and IDs and keeps counting
// IDs; down removes the dataplane and the state, but IDs still never repeat.
func TestRestartKeepsStateAndTraffic(t *testing.T) {
	b := newRestartBed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := client.New(b.socket)
	b.start()
	if _, err := c.AddVM(ctx, b.topo.Uplink, daemon.VMConfig{Name: "vm2", MAC: "02:00:00:00:00:02", Queues: []int{2}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddPort(ctx, "vm1", 1, b.ports[0]); err != nil {
		t.Fatal(err)
	}
	// counter counts what it sees in a map and in .bss: its counts must
	// go on across restarts, frames seen while no daemon ran included.
	p1, err := c.Load(ctx, "vm1", guestObj(t, "counter"), "")
	if err != nil {
		t.Fatal(err)
	}
	p2, err := c.Load(ctx, "vm2", guestObj(t, "tailcall"), "")
	if err != nil {
		t.Fatal(err)
	}
	before := b.view()
	if len(before.VMs) != 2 || len(before.Programs) != 2 || len(before.VMs[0].Ports) != 2 {
		t.Fatalf("set-up: %+v", before)
	}
	b.deliver("daemon running", 1, 200)

	for round, how := range []string{"SIGTERM", "SIGKILL"} {
		if how == "SIGTERM" {
			b.stop()
		} else {
			b.kill()
		}
		if l := leftovers(t, b.topo, "qemu0", b.ports[0], b.ports[1]); len(l) != 1 || !strings.HasPrefix(l[0], "XDP program") {
			t.Errorf("after %s the dispatcher should still be attached: %v", how, l)
		}
		b.deliver("daemon stopped by "+how, uint16(2+round), 200)
		b.start()
		if after := b.view(); !viewsEqual(before, after) {
			t.Errorf("after %s and a restart the daemon reports\n%+v\nwant\n%+v", how, after, before)
		}
		if got, seen := b.counted(p1.ID); got != uint64(400*(round+1)) || seen != got {
			t.Errorf("after %s and a restart, vm1's program counted %d frames in its map and %d in .bss; want %d in both (its maps kept)", how, got, seen, 400*(round+1))
		}
		b.deliver("daemon restarted after "+how, uint16(4+round), 200)
	}
	p3, err := c.Replace(ctx, "vm1", p1.ID, guestObj(t, "counter"), "")
	if err != nil {
		t.Fatal(err)
	}
	// A replacement is a new program: it starts from nothing.
	if got, seen := b.counted(p3.ID); got != 0 || seen != 0 {
		t.Errorf("the replacement program starts with %d / %d counted", got, seen)
	}
	if p3.ID <= p2.ID {
		t.Errorf("after restarts the next program got ID %d; IDs %d and %d were given before", p3.ID, p1.ID, p2.ID)
	}

	b.stop()
	if code, out, errs := cli(t, "down", "--config", b.cfg, "--socket", b.socket); code != 0 || !strings.Contains(out, "removed pins") || !strings.Contains(out, "cleared state") {
		t.Fatalf("down: exit %d\n%s%s", code, out, errs)
	}
	if l := leftovers(t, b.topo, "qemu0", b.ports[0], b.ports[1]); len(l) != 0 {
		t.Errorf("after down: %v", l)
	}
	b.start()
	v := b.view()
	if len(v.VMs) != 1 || v.VMs[0].Program != 0 || len(v.Programs) != 0 {
		t.Errorf("after down and a start, want only the configuration's vm1, with no program: %+v", v)
	}
	p4, err := c.Load(ctx, "vm1", guestObj(t, "pass"), "")
	if err != nil {
		t.Fatal(err)
	}
	if p4.ID <= p3.ID {
		t.Errorf("after down the next program got ID %d; %d was given before", p4.ID, p3.ID)
	}
	b.stop()
}

func viewsEqual(a, b view) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

// The daemon is killed (SIGKILL) at random points while programs are loaded,
// replaced and removed and ports are added and removed, 50 times. Each
// restart must end consistent: the program the daemon reports is the one
// in the kernel's dispatcher, its ID was handed out or is newer than every
// one handed out, no ID is ever handed out twice, the pins are exactly the
// running dataplane's, no BPF program, interface or socket is left over.
// Every tenth round, traffic is checked while no daemon runs.
func TestCrashSafety(t *testing.T) {
	const rounds = 50
	b := newRestartBed(t)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	objs := [][]byte{guestObj(t, "pass"), guestObj(t, "tailcall"), guestObj(t, "shapes")}
	c := client.New(b.socket)
	var handed []uint64 // every ID a client was given
	maxHanded := func() uint64 {
		if len(handed) == 0 {
			return 0
		}
		return slices.Max(handed)
	}
	var xdpBaseline int
	changes := 0

	for round := 0; round < rounds; round++ {
		b.start()
		if round > 0 {
			b.checkConsistent(round, handed)
		}
		// A change that completes, to see the next ID.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cur := b.view().VMs[0].Program
		var rec *daemon.ProgramRecord
		var err error
		if cur == 0 {
			rec, err = c.Load(ctx, "vm1", objs[0], "")
		} else {
			rec, err = c.Replace(ctx, "vm1", cur, objs[0], "")
		}
		cancel()
		if err != nil {
			t.Fatalf("round %d: %v\n%s", round, err, b.proc.stderr.String())
		}
		if rec.ID <= maxHanded() || rec.ID <= cur {
			t.Fatalf("round %d: ID %d handed out again or out of order (handed so far up to %d, current %d)", round, rec.ID, maxHanded(), cur)
		}
		handed = append(handed, rec.ID)
		// With the known program in place, count the kernel's XDP
		// programs: the count must not grow over the rounds.
		n := b.settleXDPCount(xdpBaseline)
		if round == 0 {
			xdpBaseline = n
		} else if n > xdpBaseline {
			t.Errorf("round %d: %d XDP programs in the kernel, %d after the first round: something leaked", round, n, xdpBaseline)
		}

		// Changes in flight, and a kill at a random point among them.
		stop := make(chan struct{})
		done := make(chan []uint64)
		go func() {
			var got []uint64
			defer func() { done <- got }()
			r := rand.New(rand.NewPCG(seed, uint64(round)+1))
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				switch r.IntN(4) {
				case 0, 1:
					if cur, err := c.VM(ctx, "vm1"); err == nil {
						obj := objs[r.IntN(len(objs))]
						if round%10 == 9 {
							obj = objs[0] // traffic is checked next: a program that passes it
						}
						var rec *daemon.ProgramRecord
						if cur.Program == 0 {
							rec, err = c.Load(ctx, "vm1", obj, "")
						} else {
							rec, err = c.Replace(ctx, "vm1", cur.Program, obj, "")
						}
						if err == nil {
							got = append(got, rec.ID)
						}
					}
				case 2:
					if cur, err := c.VM(ctx, "vm1"); err == nil && cur.Program != 0 {
						c.Remove(ctx, "vm1", cur.Program)
					}
				case 3:
					n := uint32(1 + r.IntN(2))
					if _, err := c.AddPort(ctx, "vm1", n, b.ports[n-1]); err != nil {
						c.RemovePort(ctx, "vm1", n)
					}
				}
				cancel()
			}
		}()
		time.Sleep(time.Duration(rng.IntN(150)) * time.Millisecond)
		b.kill()
		close(stop)
		inflight := <-done
		handed = append(handed, inflight...)
		changes += len(inflight)

		if round%10 == 9 {
			// vm1 runs "pass" or the built-in program: both deliver.
			b.deliver(fmt.Sprintf("round %d, no daemon", round), uint16(100+round), 100)
		}
	}
	b.start()
	b.checkConsistent(rounds, handed)
	b.stop()
	t.Logf("%d rounds, %d program changes completed before the kills, %d IDs handed out", rounds, changes, len(handed))
}

// checkConsistent checks a restarted daemon against the kernel and the
// pins, and the IDs it reports against those handed out.
func (b *restartBed) checkConsistent(round int, handed []uint64) {
	t := b.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	vm, err := client.New(b.socket).VM(ctx, "vm1")
	if err != nil {
		t.Fatalf("round %d: %v", round, err)
	}
	maxHanded := uint64(0)
	if len(handed) > 0 {
		maxHanded = slices.Max(handed)
	}
	// Pins: exactly the running dataplane's.
	dir := filepath.Join(b.pins, b.topo.Uplink)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names, gens, guests []string
	for _, e := range ents {
		names = append(names, e.Name())
		switch {
		case strings.HasPrefix(e.Name(), "prog-"):
			gens = append(gens, e.Name())
		case strings.HasPrefix(e.Name(), "guest-"):
			guests = append(guests, e.Name())
		}
	}
	sort.Strings(names)
	want := []string{"flood_link", "link", "tx-" + fmt.Sprint(b.tap.Index())}
	for _, w := range want {
		if !slices.Contains(names, w) {
			t.Errorf("round %d: pin %s missing: %v", round, w, names)
		}
	}
	if len(gens) != 1 || len(names) != len(want)+len(gens)+len(guests) {
		t.Errorf("round %d: pins %v: want %v, one prog-<id> and guest-<id> for a tail-calling program", round, names, want)
	}
	// The kernel runs what the daemon reports.
	if len(gens) == 1 {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, gens[0], "vm_progs"), nil)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		var kid uint32
		err = m.Lookup(uint32(vm.Slot), &kid)
		m.Close()
		if err != nil {
			t.Errorf("round %d: vm1's slot %d of the running dispatcher is empty: %v", round, vm.Slot, err)
		}
		if vm.Program != 0 {
			rec, err := client.New(b.socket).Program(ctx, vm.Program)
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			if rec.KernelID != kid {
				t.Errorf("round %d: the daemon says vm1 runs kernel program %d, the dispatcher runs %d", round, rec.KernelID, kid)
			}
			if len(guests) > 1 {
				t.Errorf("round %d: program arrays of old programs still pinned: %v", round, guests)
			}
		}
	}
	if vm.Program != 0 && !slices.Contains(handed, vm.Program) && vm.Program <= maxHanded {
		t.Errorf("round %d: vm1 runs program %d, which no client was given and which is not newer than %d", round, vm.Program, maxHanded)
	}
	for _, p := range vm.Ports {
		if p.Number != 0 && p.Ifname != b.ports[p.Number-1] {
			t.Errorf("round %d: port %d is %s", round, p.Number, p.Ifname)
		}
	}
	if l := leftovers(t, b.topo, "qemu0", b.ports[0], b.ports[1]); len(l) != 1 {
		t.Errorf("round %d: interfaces and programs: %v", round, l)
	}
	files, _ := os.ReadDir(b.dir)
	for _, f := range files {
		if n := f.Name(); n != "config.json" && n != "api.sock" && n != "state" {
			t.Errorf("round %d: %s left in the daemon's directory", round, n)
		}
	}
	objects, _ := os.ReadDir(filepath.Join(b.state, "objects"))
	if want := min(1, int(vm.Program)); len(objects) != want {
		t.Errorf("round %d: %d stored objects, want %d", round, len(objects), want)
	}
}

// settleXDPCount counts the kernel's XDP programs, waiting (at most 5 s)
// for freed ones to go: until the count is at most want or, with want 0,
// until it holds still for half a second.
func (b *restartBed) settleXDPCount(want int) int {
	last := -1
	for deadline := time.Now().Add(5 * time.Second); ; {
		n := b.countXDPPrograms()
		if (want > 0 && n <= want) || (want == 0 && n == last) || time.Now().After(deadline) {
			return n
		}
		last = n
		if want == 0 {
			time.Sleep(500 * time.Millisecond)
		} else {
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// countXDPPrograms counts this test's XDP programs, and only those: other
// tests and tools on the machine load XDP programs too. The test's
// programs are the ones reachable from its roots (the pins under its pin
// directory, the programs attached to the interfaces of its host
// namespace, the file descriptors of the daemon it runs) through the maps
// they use and the programs those maps hold (program arrays, device maps
// with programs). A program the daemon leaked stays reachable from one of
// those: nothing else holds the test's objects.
func (b *restartBed) countXDPPrograms() int {
	t := b.t
	t.Helper()
	var progs, maps []uint32
	// Pins: programs, maps and links.
	filepath.WalkDir(b.pins, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if p, err := ebpf.LoadPinnedProgram(path, nil); err == nil {
			if info, err := p.Info(); err == nil {
				id, _ := info.ID()
				progs = append(progs, uint32(id))
			}
			p.Close()
		} else if m, err := ebpf.LoadPinnedMap(path, nil); err == nil {
			if info, err := m.Info(); err == nil {
				id, _ := info.ID()
				maps = append(maps, uint32(id))
			}
			m.Close()
		} else if l, err := link.LoadPinnedLink(path, nil); err == nil {
			if info, err := l.Info(); err == nil {
				progs = append(progs, uint32(info.Program))
			}
			l.Close()
		}
		return nil
	})
	// Attachments on the interfaces of the test's host namespace.
	err := b.ns.Do(func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			a := l.Attrs()
			if a.Xdp != nil && a.Xdp.ProgId != 0 {
				progs = append(progs, a.Xdp.ProgId)
			}
			for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
				res, err := link.QueryPrograms(link.QueryOptions{Target: a.Index, Attach: at})
				if err != nil {
					continue
				}
				for _, p := range res.Programs {
					progs = append(progs, uint32(p.ID))
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The running daemon's file descriptors (links name their program).
	if b.proc != nil {
		dir := fmt.Sprintf("/proc/%d/fdinfo", b.proc.cmd.Process.Pid)
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			raw, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(raw), "\n") {
				k, v, ok := strings.Cut(line, ":")
				id, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
				if !ok || err != nil || id == 0 {
					continue
				}
				switch k {
				case "prog_id":
					progs = append(progs, uint32(id))
				case "map_id":
					maps = append(maps, uint32(id))
				}
			}
		}
	}
	return countReachableXDP(progs, maps)
}

// countReachableXDP walks from the given programs and maps to every
// program and map they reach and counts the XDP programs among them.
func countReachableXDP(progs, maps []uint32) int {
	seenProg, seenMap := map[uint32]bool{}, map[uint32]bool{}
	n := 0
	for len(progs) > 0 || len(maps) > 0 {
		if len(progs) > 0 {
			id := progs[len(progs)-1]
			progs = progs[:len(progs)-1]
			if id == 0 || seenProg[id] {
				continue
			}
			seenProg[id] = true
			p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
			if err != nil {
				continue // freed meanwhile
			}
			if p.Type() == ebpf.XDP {
				n++
			}
			if info, err := p.Info(); err == nil {
				ids, _ := info.MapIDs()
				for _, m := range ids {
					maps = append(maps, uint32(m))
				}
			}
			p.Close()
			continue
		}
		id := maps[len(maps)-1]
		maps = maps[:len(maps)-1]
		if id == 0 || seenMap[id] {
			continue
		}
		seenMap[id] = true
		m, err := ebpf.NewMapFromID(ebpf.MapID(id))
		if err != nil {
			continue
		}
		switch {
		case m.Type() == ebpf.ProgramArray:
			var k, v uint32
			for it := m.Iterate(); it.Next(&k, &v); {
				progs = append(progs, v)
			}
		case (m.Type() == ebpf.DevMap || m.Type() == ebpf.DevMapHash) && m.ValueSize() == 8:
			// struct bpf_devmap_val: ifindex, then the program's ID.
			var k uint32
			var v [2]uint32
			for it := m.Iterate(); it.Next(&k, &v); {
				progs = append(progs, v[1])
			}
		}
		m.Close()
	}
	return n
}

// The restart tests count only their own XDP programs: one that something
// else on the machine loads meanwhile does not change the count, while the
// daemon's own (dispatcher, VM frame, guest stages, tap TX) are all in it.
func TestCountOwnXDPPrograms(t *testing.T) {
	b := newRestartBed(t)
	b.start()
	defer b.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := client.New(b.socket).Load(ctx, "vm1", guestObj(t, "tailcall"), ""); err != nil {
		t.Fatal(err)
	}
	before := b.settleXDPCount(0)
	// dispatch, the VM's framed entry, its tail-call stage, vm_tx on the tap.
	if before < 4 {
		t.Fatalf("%d XDP programs counted for the test's daemon, want at least 4", before)
	}
	other, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "not_the_tests", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	t.Logf("%d XDP programs of the test's daemon", before)
	if after := b.countXDPPrograms(); after != before {
		t.Errorf("%d XDP programs counted with an unrelated one loaded, %d before", after, before)
	}
}
