package guestprog

import (
	"encoding/binary"
	"errors"
	"os"
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
	maps, err := NewHostMaps("t", DeliverTap)
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

func ethFrame(proto uint16) []byte {
	f := make([]byte, 64)
	copy(f[0:6], []byte{2, 0, 0, 0, 0, 1})
	copy(f[6:12], []byte{2, 0, 0, 0, 0, 2})
	binary.BigEndian.PutUint16(f[12:], proto)
	return f
}

// Verdicts of the host epilogue (bpf/hostd.h).
const (
	vAborted = iota
	vDrop
	vPass
	vTX
	vRedirect
	vInvalid
	vUndelivered
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
			for v := uint32(vAborted); v <= vUndelivered; v++ {
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
