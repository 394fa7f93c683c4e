package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	hostbpf "github.com/xdp-hostd/xdp-hostd/bpf"
	"github.com/xdp-hostd/xdp-hostd/client"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/traffic"
)

// filtered sends n frames to vm1 from a blocked source and n from another,
// and returns how many of each vm1 got.
func (b *restartBed) filtered(tag uint16, n int) (blocked, other uint64) {
	b.t.Helper()
	if b.sender == nil {
		b.sender = testnet.Sender(b.t, b.topo)
	}
	before := b.reader.Snapshot()
	for i, src := range []string{"10.9.9.9", "10.1.1.1"} {
		spec := traffic.FrameSpec{Dst: net.HardwareAddr{2, 0, 0, 0, 0, 1}, Src: b.topo.WireMAC, SrcIP: netip.MustParseAddr(src),
			DstIP: netip.MustParseAddr("10.0.0.1"), Size: 100, Tag: tag + uint16(i)}
		if err := b.sender.Send(spec, 1, 0, n); err != nil {
			b.t.Fatal(err)
		}
	}
	// Wait for the frames that pass, then a little for any others.
	for deadline := time.Now().Add(5 * time.Second); b.reader.Snapshot().ByTag[tag+1]-before.ByTag[tag+1] < uint64(n) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	after := b.reader.Snapshot()
	return after.ByTag[tag] - before.ByTag[tag], after.ByTag[tag+1] - before.ByTag[tag+1]
}

// A VM's stored program object is damaged, then deleted: with the pins of
// the previous daemon, the restarted daemon keeps the very program that
// was running (same kernel program, its maps and its filtering) and says
// so; with the pins gone too, the VM fails closed (drops everything) and
// says why, until the program is loaded again. Never the built-in
// pass-everything program.
func TestDamagedObjectKeepsRunningOrFailsClosed(t *testing.T) {
	b := newRestartBed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := client.New(b.socket)
	b.start()
	ddos, err := hostbpf.Example("ddos_filter")
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.Load(ctx, "vm1", ddos, "")
	if err != nil {
		t.Fatal(err)
	}
	// Block 10.9.9.9 through the program's pinned map, as an operator does.
	blockedMap, err := ebpf.LoadPinnedMap(filepath.Join(b.pins, b.topo.Uplink, fmt.Sprintf("guest-%d-p%d", p.KernelID, p.ID), "blocked"), nil)
	if err != nil {
		t.Fatal(err)
	}
	key := struct {
		Len  uint32
		Addr [4]byte
	}{32, [4]byte{10, 9, 9, 9}}
	if err := blockedMap.Put(key, uint64(0)); err != nil {
		t.Fatal(err)
	}
	blockedMap.Close()
	if bl, ok := b.filtered(1, 100); bl != 0 || ok != 100 {
		t.Fatalf("the filter lets %d of 100 blocked frames and %d of 100 others through", bl, ok)
	}
	object := filepath.Join(b.state, "objects", p.SHA256)

	tag := uint16(10)
	for _, damage := range []string{"deleted", "corrupted"} {
		b.stop()
		if damage == "corrupted" {
			// Bit rot: the same length, one byte flipped.
			ddos[len(ddos)/2] ^= 0x40
			os.WriteFile(object, ddos, 0o600)
			ddos[len(ddos)/2] ^= 0x40
		} else {
			os.Remove(object)
		}
		b.start()
		vm, err := c.VM(ctx, "vm1")
		if err != nil {
			t.Fatal(err)
		}
		if vm.Program != p.ID || !strings.Contains(vm.ProgramProblem, "left running on the pins is kept") {
			t.Errorf("object %s, pins kept: vm1 runs program %d (%q), want %d kept from the pins", damage, vm.Program, vm.ProgramProblem, p.ID)
		}
		rec, err := c.Program(ctx, p.ID)
		if err != nil || rec.KernelID != p.KernelID {
			t.Errorf("object %s: program %d is kernel program %d (%v); it was %d", damage, p.ID, rec.KernelID, err, p.KernelID)
		}
		if bl, ok := b.filtered(tag, 100); bl != 0 || ok != 100 {
			t.Errorf("object %s, pins kept: %d of 100 blocked frames and %d of 100 others reached vm1; want 0 and 100", damage, bl, ok)
		}
		tag += 2
	}

	// Pins gone too: nothing to keep; the VM drops everything.
	b.stop()
	ents, _ := os.ReadDir(filepath.Join(b.pins, b.topo.Uplink))
	for _, e := range ents {
		os.RemoveAll(filepath.Join(b.pins, b.topo.Uplink, e.Name()))
	}
	b.start()
	vm, err := c.VM(ctx, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	if vm.Program != p.ID || !strings.HasPrefix(vm.ProgramProblem, "fail closed") || !strings.Contains(vm.ProgramProblem, "drops every frame") {
		t.Errorf("object and pins gone: vm1 runs program %d (%q), want %d failed closed", vm.Program, vm.ProgramProblem, p.ID)
	}
	if bl, ok := b.filtered(tag, 100); bl != 0 || ok != 0 {
		t.Errorf("failed closed: %d blocked and %d other frames reached vm1; want none", bl, ok)
	}
	if code, out, _ := cli(t, "vm", "show", "--socket", b.socket, "vm1"); code != 0 || !strings.Contains(out, "FAIL-CLOSED") || !strings.Contains(out, "drops every frame") {
		t.Errorf("vm show does not say the VM fails closed: exit %d\n%s", code, out)
	}
	// Still so after another restart: the state keeps the program.
	b.stop()
	b.start()
	if vm, err := c.VM(ctx, "vm1"); err != nil || !strings.HasPrefix(vm.ProgramProblem, "fail closed") {
		t.Errorf("after another restart: %+v %v", vm, err)
	}
	// Loading the program again ends it.
	p2, err := c.Replace(ctx, "vm1", p.ID, ddos, "")
	if err != nil {
		t.Fatal(err)
	}
	if vm, err := c.VM(ctx, "vm1"); err != nil || vm.Program != p2.ID || vm.ProgramProblem != "" {
		t.Errorf("after a replace: %+v %v", vm, err)
	}
	if bl, ok := b.filtered(tag+2, 100); bl != 100 || ok != 100 {
		t.Errorf("the new program (nothing blocked yet) delivered %d and %d of 100", bl, ok)
	}
	// The damaged copy was written again: the next start restores it.
	if got, err := os.ReadFile(object); err != nil || !bytes.Equal(got, ddos) {
		t.Errorf("the stored object was not repaired by loading it again: %v", err)
	}
	b.stop()
	b.start()
	if vm, err := c.VM(ctx, "vm1"); err != nil || vm.Program != p2.ID || vm.ProgramProblem != "" {
		t.Errorf("after a restart with the object repaired: %+v %v", vm, err)
	}
	b.stop()
}
