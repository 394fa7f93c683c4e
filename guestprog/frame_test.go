package guestprog

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	hostbpf "github.com/xdp-hostd/xdp-hostd/bpf"
)

func guest(t *testing.T, name string) []byte {
	t.Helper()
	b, err := hostbpf.Guest(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("XDP_HOSTD_REQUIRE_ROOT_TESTS") == "1" {
			t.Fatal("test needs root")
		}
		t.Skip("needs root to load BPF programs: run as root (sudo go test ./...)")
	}
}

func counters(t *testing.T, m *ebpf.Map, verdict uint32) (pkts uint64) {
	t.Helper()
	var per []struct{ Packets, Bytes uint64 }
	if err := m.Lookup(verdict, &per); err != nil {
		t.Fatal(err)
	}
	for _, c := range per {
		pkts += c.Packets
	}
	return pkts
}

func loadGuest(t *testing.T, name string) (*Program, *HostMaps) {
	t.Helper()
	requireRoot(t)
	obj, err := Parse(guest(t, name), "")
	if err != nil {
		t.Fatal(err)
	}
	maps, err := NewHostMaps("t", DeliverTap, vmMAC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { maps.Close() })
	p, err := Load(obj, maps)
	if err != nil {
		t.Fatalf("%+v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p, maps
}

// vmMAC is the test VM's MAC: the source of ethFrame's frames.
var vmMAC = net.HardwareAddr{2, 0, 0, 0, 0, 2}

func ethFrame(proto uint16) []byte {
	f := make([]byte, 64)
	copy(f[0:6], vmMAC)
	copy(f[6:12], vmMAC)
	binary.BigEndian.PutUint16(f[12:], proto)
	return f
}

// Counter slots of the host epilogue (bpf/hostd.h).
const (
	vAborted     = uint32(hostbpf.VmprogHostdVerdictHOSTD_V_ABORTED)
	vDrop        = uint32(hostbpf.VmprogHostdVerdictHOSTD_V_DROP)
	vPass        = uint32(hostbpf.VmprogHostdVerdictHOSTD_V_PASS)
	vTX          = uint32(hostbpf.VmprogHostdVerdictHOSTD_V_TX)
	vRedirect    = uint32(hostbpf.VmprogHostdVerdictHOSTD_V_REDIRECT)
	vInvalid     = uint32(hostbpf.VmprogHostdVerdictHOSTD_V_INVALID)
	vUndelivered = uint32(hostbpf.VmprogHostdVerdictHOSTD_V_UNDELIVERED)
	vSpoofed     = uint32(hostbpf.VmprogHostdVerdictHOSTD_V_SPOOFED)
	vNoPort      = uint32(hostbpf.VmprogHostdVerdictHOSTD_V_NO_PORT)
	vMax         = uint32(hostbpf.VmprogHostdVerdictHOSTD_V_MAX)
)

func TestFramedVerdicts(t *testing.T) {
	for _, tc := range []struct {
		guest   string
		frame   []byte
		ret     uint32 // what the XDP program returns to the driver
		counted uint32 // the counter slot that must count it
	}{
		// No tap and no socket in the test maps: PASS cannot be delivered.
		{"pass", ethFrame(0x0800), 1 /* XDP_DROP */, vUndelivered},
		{"tx", ethFrame(0x0800), 3 /* XDP_TX */, vTX},
		// The tail-called stage's verdict still reaches the epilogue.
		{"tailcall", ethFrame(0x0800), 1, vDrop},
		{"tailcall", ethFrame(0x86dd), 1, vUndelivered},
	} {
		t.Run(tc.guest, func(t *testing.T) {
			p, maps := loadGuest(t, tc.guest)
			ret, err := p.Entry.Run(&ebpf.RunOptions{Data: tc.frame, Repeat: 1})
			if err != nil {
				t.Fatal(err)
			}
			if ret != tc.ret {
				t.Errorf("returned %d, want %d", ret, tc.ret)
			}
			for v := uint32(0); v < vMax; v++ {
				want := uint64(0)
				if v == tc.counted {
					want = 1
				}
				if got := counters(t, maps.Counters, v); got != want {
					t.Errorf("counter %d = %d, want %d", v, got, want)
				}
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	if _, err := Parse([]byte("not an ELF"), ""); !errors.Is(err, ErrInvalidObject) {
		t.Errorf("garbage: %v", err)
	}
	if _, err := Parse(guest(t, "tailcall"), "nope"); !errors.Is(err, ErrRefused) {
		t.Errorf("unknown entry: %v", err)
	}
	obj, err := Parse(guest(t, "tailcall"), "")
	if err != nil {
		t.Fatal(err)
	}
	if obj.Entry != "entry" {
		t.Errorf("entry = %q, want the program no array lists", obj.Entry)
	}
}

// The frame keeps a guest's behaviour on every path — many exits,
// subprograms (nested), wide instructions, a bounded loop, bpf_loop, an
// invalid action — and every run reaches the epilogue exactly once: the
// verdict the guest returns on its own is the one the epilogue counts.
func TestFrameKeepsBehaviour(t *testing.T) {
	requireRoot(t)
	b := guest(t, "shapes")
	obj, err := Parse(b, "")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := ebpf.NewCollection(obj.Spec)
	if err != nil {
		t.Fatalf("load the guest unframed: %v", err)
	}
	defer raw.Close()
	p, maps := loadGuest(t, "shapes")

	// What the epilogue makes of a verdict, and where it counts it (no tap
	// is set, so PASS is counted as undelivered and dropped).
	expect := func(v uint32) (ret, slot uint32) {
		switch v {
		case 0:
			return 1, vAborted
		case 1:
			return 1, vDrop
		case 2:
			return 1, vUndelivered
		case 3:
			return 3, vTX
		}
		// A bare XDP_REDIRECT (4) names no port: invalid, like 77.
		return 1, vInvalid
	}
	inputs := [][]byte{make([]byte, 15)} // too short: ABORTED
	for sel := 0; sel <= 10; sel++ {
		f := ethFrame(0x0800)
		f[14] = byte(sel)
		inputs = append(inputs, f)
	}
	seen := map[uint32]bool{}
	for i, in := range inputs {
		want, err := raw.Programs["shapes"].Run(&ebpf.RunOptions{Data: in})
		if err != nil {
			t.Fatal(err)
		}
		seen[want] = true
		before := make([]uint64, vMax)
		for s := range before {
			before[s] = counters(t, maps.Counters, uint32(s))
		}
		got, err := p.Entry.Run(&ebpf.RunOptions{Data: in})
		if err != nil {
			t.Fatal(err)
		}
		wantRet, wantSlot := expect(want)
		if got != wantRet {
			t.Errorf("input %d: framed program returned %d, want %d (guest verdict %d)", i, got, wantRet, want)
		}
		for s := range before {
			d := counters(t, maps.Counters, uint32(s)) - before[s]
			if (uint32(s) == wantSlot && d != 1) || (uint32(s) != wantSlot && d != 0) {
				t.Errorf("input %d (guest verdict %d): counter %d moved by %d", i, want, s, d)
			}
		}
	}
	for _, v := range []uint32{0, 1, 2, 3, 4, 77} {
		if !seen[v] {
			t.Errorf("the inputs never produced guest verdict %d", v)
		}
	}
}

// A program that passes the policy but not the kernel verifier comes back
// with the verifier's reason, and leaves nothing loaded.
func TestVerifierRefusal(t *testing.T) {
	requireRoot(t)
	b, err := os.ReadFile("testdata/verifier/oob.o")
	if err != nil {
		t.Fatal(err)
	}
	obj, err := Parse(b, "")
	if err != nil {
		t.Fatal(err)
	}
	err = VerifyInKernel(obj)
	var verr *VerifierError
	if !errors.As(err, &verr) {
		t.Fatalf("got %v, want a VerifierError", err)
	}
	if len(verr.Log) == 0 || len(verr.Log) > verifierLogLines+1 || !strings.Contains(strings.Join(verr.Log, "\n"), "invalid access to packet") {
		t.Errorf("verifier log:\n%s", strings.Join(verr.Log, "\n"))
	}
}
