package daemon

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	hostbpf "github.com/xdp-hostd/xdp-hostd/bpf"
	"github.com/xdp-hostd/xdp-hostd/guestprog"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/traffic"
)

var quiet = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

func guest(t testing.TB, name string) []byte {
	t.Helper()
	b, err := hostbpf.Guest(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type setup struct {
	topo *hostnet.Topology
	dp   *hostnet.Dataplane
	vm   *hostnet.VM
	reg  *Registry
}

func newSetup(t *testing.T) *setup {
	t.Helper()
	topo := testnet.Topology(t, 4)
	dp, err := hostnet.Open(hostnet.Config{Uplink: topo.Uplink, NetNS: topo.HostNS, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	vm, err := dp.AddVM(hostnet.VMSpec{Name: "vm1", MAC: net.HardwareAddr{2, 0, 0, 0, 1, 1}, Queues: []int{1}})
	if err != nil {
		t.Fatal(err)
	}
	reg := NewRegistry(quiet, guestprog.Limits{}, 1)
	reg.AddVM(vm)
	return &setup{topo, dp, vm, reg}
}

// heldObjects lists the BPF programs and maps this process holds open
// (from /proc/self/fdinfo): whatever a failed install left loaded would be
// among them, and other tests running at the same time are not.
func heldObjects(t *testing.T) map[string]bool {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fdinfo")
	if err != nil {
		t.Fatal(err)
	}
	held := map[string]bool{}
	for _, e := range ents {
		b, err := os.ReadFile("/proc/self/fdinfo/" + e.Name())
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "prog_id:") || strings.HasPrefix(line, "map_id:") {
				held[strings.Join(strings.Fields(line), " ")] = true
			}
		}
	}
	return held
}

func TestRegistryCRUD(t *testing.T) {
	s := newSetup(t)
	rec, err := s.reg.Load("vm1", guest(t, "port"), "")
	if err != nil {
		t.Fatal(err)
	}
	if rec.ID != 1 || len(rec.SHA256) != 64 || rec.KernelID == 0 || rec.Entry != "port" || rec.VM != "vm1" {
		t.Errorf("record %+v", rec)
	}
	if _, err := s.reg.Load("vm1", guest(t, "tx"), ""); !errors.Is(err, ErrHasProgram) {
		t.Errorf("second load: %v", err)
	}
	// A stale expected ID fails and changes nothing.
	if _, err := s.reg.Replace("vm1", 7, guest(t, "tx"), ""); !errors.Is(err, ErrStale) {
		t.Errorf("stale replace: %v", err)
	}
	if err := s.reg.Remove("vm1", 7); !errors.Is(err, ErrStale) {
		t.Errorf("stale remove: %v", err)
	}
	if cur, _ := s.reg.Show(1); cur.KernelID != rec.KernelID {
		t.Errorf("a stale request changed the program: %+v", cur)
	}
	rec2, err := s.reg.Replace("vm1", 1, guest(t, "tx"), "")
	if err != nil || rec2.ID != 2 {
		t.Fatalf("replace: %+v %v", rec2, err)
	}
	if _, err := s.reg.Show(1); !errors.Is(err, ErrNoSuchProgram) {
		t.Errorf("the replaced program is still shown: %v", err)
	}
	if err := s.reg.Remove("vm1", 2); err != nil {
		t.Fatal(err)
	}
	if l := s.reg.List(); len(l) != 0 {
		t.Errorf("after remove: %+v", l)
	}
	rec3, err := s.reg.Load("vm1", guest(t, "pass"), "")
	if err != nil || rec3.ID != 3 {
		t.Errorf("IDs are not reused: %+v %v", rec3, err)
	}
	if _, err := s.reg.Load("nope", guest(t, "pass"), ""); !errors.Is(err, ErrNoSuchVM) {
		t.Errorf("unknown VM: %v", err)
	}
}

// A refused program, by the policy or by the kernel verifier, leaves nothing
// loaded and the current program running.
func TestRegistryRefusedLeavesNothing(t *testing.T) {
	s := newSetup(t)
	rec, err := s.reg.Load("vm1", guest(t, "port"), "")
	if err != nil {
		t.Fatal(err)
	}
	before := heldObjects(t)
	hostile, _ := filepath.Glob("../guestprog/testdata/hostile/*.o")
	kernelRefused, _ := filepath.Glob("../guestprog/testdata/verifier/*.o")
	if len(hostile) == 0 || len(kernelRefused) == 0 {
		t.Fatal("no hostile corpus")
	}
	for _, path := range append(hostile, kernelRefused...) {
		obj, _ := os.ReadFile(path)
		_, err := s.reg.Replace("vm1", rec.ID, obj, "")
		var refused *guestprog.RefusedError
		var verr *guestprog.VerifierError
		if !errors.As(err, &refused) && !errors.As(err, &verr) {
			t.Errorf("%s: %v, want a policy or verifier refusal", filepath.Base(path), err)
		}
	}
	for obj := range heldObjects(t) {
		if !before[obj] {
			t.Errorf("a refused install left %s loaded", obj)
		}
	}
	if cur, err := s.reg.Current("vm1"); err != nil || cur != rec.ID {
		t.Errorf("current program %d (%v), want %d", cur, err, rec.ID)
	}
	if s.reg.NextID() != 2 {
		t.Errorf("refusals used up IDs: next is %d", s.reg.NextID())
	}
}

// 1000 replacements while traffic flows: every frame is delivered exactly
// once, by a complete program (both alternate programs pass everything the
// test sends), and the counters, kept across replacements, match.
func TestReplaceUnderTraffic(t *testing.T) {
	s := newSetup(t)
	tap := testnet.TapCounter(t, s.vm.Tap())
	sender := testnet.Sender(t, s.topo)
	spec := traffic.FrameSpec{Dst: s.vm.MAC(), Src: s.topo.WireMAC, SrcIP: netip.MustParseAddr("10.201.0.2"),
		DstIP: netip.MustParseAddr("10.201.0.11"), SrcPort: 1000, DstPort: 80, Size: 80, Tag: 5}

	rec, err := s.reg.Load("vm1", guest(t, "pass"), "")
	if err != nil {
		t.Fatal(err)
	}
	const replacements = 1000
	stop := make(chan struct{})
	var sent uint32
	var wg sync.WaitGroup
	var sendErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if sendErr = sender.Send(spec, 1, sent, 64); sendErr != nil {
				return
			}
			sent += 64
			// Keep within what the tap holds for its reader (4096 frames):
			// the test counts what the programs deliver, not reader speed.
			for wait := time.Now().Add(time.Second); uint64(sent)-tap.Total() > 1024 && time.Now().Before(wait); {
				time.Sleep(50 * time.Microsecond)
			}
		}
	}()
	objs := [][]byte{guest(t, "port"), guest(t, "pass")}
	start := time.Now()
	for i := 0; i < replacements; i++ {
		next, err := s.reg.Replace("vm1", rec.ID, objs[i%2], "")
		if err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("replacement %d: %v", i, err)
		}
		rec = next
	}
	close(stop)
	wg.Wait()
	if sendErr != nil {
		t.Fatal(sendErr)
	}
	t.Logf("%d replacements in %v while %d frames were sent", replacements, time.Since(start), sent)
	if rec.ID != replacements+1 {
		t.Errorf("last ID %d, want %d", rec.ID, replacements+1)
	}

	deadline := time.Now().Add(10 * time.Second)
	for tap.Snapshot().ByTag[5] < uint64(sent) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	snap := tap.Snapshot()
	if snap.ByTag[5] != uint64(sent) || snap.Duplicates != 0 {
		t.Errorf("the VM got %d frames (%d duplicates) of %d sent", snap.ByTag[5], snap.Duplicates, sent)
	}
	v, err := s.vm.Verdicts()
	if err != nil {
		t.Fatal(err)
	}
	want := hostnet.Verdicts{Pass: hostnet.Count{Packets: uint64(sent), Bytes: uint64(sent) * 80}}
	if v != want {
		t.Errorf("verdicts %+v, want %+v", v, want)
	}
	if st, _ := s.dp.Stats(); st.NoProgram.Packets != 0 {
		t.Errorf("%d packets found the slot empty during a replacement", st.NoProgram.Packets)
	}
}

func TestMetrics(t *testing.T) {
	s := newSetup(t)
	if _, err := s.reg.Load("vm1", guest(t, "port"), ""); err != nil {
		t.Fatal(err)
	}
	obj, _ := os.ReadFile("../guestprog/testdata/hostile/fib_lookup.o")
	s.reg.Replace("vm1", 1, obj, "")
	d := &Daemon{dps: []*hostnet.Dataplane{s.dp}, Programs: s.reg}
	if _, err := ServeMetrics(d, "10.1.2.3:9464"); err == nil {
		t.Error("a non-loopback metrics address was accepted")
	}
	m, err := ServeMetrics(d, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	resp, err := http.Get("http://" + m.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`xdp_hostd_vm_verdict_packets_total{uplink="` + s.topo.Uplink + `",verdict="pass",vm="vm1"} 0`,
		`xdp_hostd_programs_loaded_total 1`,
		`xdp_hostd_programs_rejected_total{reason="host-state"} 1`,
		`# TYPE xdp_hostd_dispatch_packets_total counter`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}
}
