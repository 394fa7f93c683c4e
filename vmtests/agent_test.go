package vmtests

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	hostbpf "github.com/xdp-hostd/xdp-hostd/bpf"
	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/traffic"
	"github.com/xdp-hostd/xdp-hostd/vmtests/vmproto"
)

// agent runs xdp-hostd-agent in the guest.
func agent(t *testing.T, g *VM, args ...string) vmproto.ExecResult {
	t.Helper()
	res, err := Call[vmproto.ExecResult](g, vmproto.Exec{Argv: append([]string{"/bin/xdp-hostd-agent", "--timeout", "20s"}, args...), Timeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("%s: xdp-hostd-agent %v: %v", g.Name, args, err)
	}
	return res
}

// putFile writes a host file's bytes into the guest at path.
func putFile(t *testing.T, g *VM, path string, b []byte) {
	t.Helper()
	res, err := Call[vmproto.ExecResult](g, vmproto.Exec{Argv: []string{"sh", "-c", "echo " + base64.StdEncoding.EncodeToString(b) + " | base64 -d > " + path}})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("%s: write %s: %v %+v", g.Name, path, err, res)
	}
}

// Two real guests run xdp-hostd's agent over their virtio-serial channels.
// The first reads caps, submits the ddos_filter example compiled on the
// host (traffic from a blocked prefix stops reaching it), replaces it with
// port_forward (traffic is back) and removes it. The second sees only its
// own VM and cannot replace or remove the first's program. Garbage written
// on the channel from inside the guest gets the channel reset, and the
// agent works again afterwards.
func TestGuestAgent(t *testing.T) {
	SkipWithoutQEMU(t)
	testnet.RequireRoot(t)
	const (
		mac1, mac2 = "52:54:00:00:ab:01", "52:54:00:00:ab:02"
		guestIP    = "10.201.0.60"
		n          = 100
	)
	topo := testnet.Topology(t, 2)
	vu1 := TempSocketPath(t, "vu1.sock")
	ag1, ag2 := TempSocketPath(t, "ag1.sock"), TempSocketPath(t, "ag2.sock")
	cfg := &daemon.Config{VMSocketDirs: []string{filepath.Dir(vu1), filepath.Dir(ag1), filepath.Dir(ag2)}, Uplinks: []daemon.UplinkConfig{{Name: topo.Uplink, NetNS: topo.HostNS, VMs: []daemon.VMConfig{
		{Name: "vm1", MAC: mac1, Queues: []int{0}, Delivery: "vhost-user", VhostUserSocket: vu1, AgentSocket: ag1},
		{Name: "vm2", MAC: mac2, Queues: []int{1}, AgentSocket: ag2},
	}}}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d, err := daemon.Start(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })

	g1 := StartT(t, WithName("agent-vm1"), WithVhostUserNIC(VhostUserNIC{Socket: vu1, MAC: mac1, Queues: 1}), WithXDPHostdAgent(ag1))
	g2 := StartT(t, WithName("agent-vm2"), WithXDPHostdAgent(ag2))
	if _, err := Call[vmproto.ConfigureResult](g1, vmproto.Configure{MAC: mac1, Addr: guestIP + "/24"}); err != nil {
		t.Fatal(err)
	}
	for name, ex := range map[string]string{"/tmp/ddos.o": "ddos_filter", "/tmp/fwd.o": "port_forward"} {
		b, err := hostbpf.Example(ex)
		if err != nil {
			t.Fatal(err)
		}
		putFile(t, g1, name, b)
	}
	vm1, _ := d.VM("vm1")

	// burst sends n datagrams from the wire side to the guest and returns
	// how many it received.
	wireIP, _ := netip.AddrFromSlice(topo.WireIP)
	sender := testnet.Sender(t, topo)
	burst := func(marker string, wait time.Duration) int {
		t.Helper()
		// A listener per burst: counting closes it.
		if _, err := g1.Do(vmproto.UDPListen{Port: 40000}); err != nil {
			t.Fatal(err)
		}
		mac, _ := net.ParseMAC(mac1)
		spec := traffic.FrameSpec{Dst: mac, Src: topo.WireMAC, SrcIP: wireIP, DstIP: netip.MustParseAddr(guestIP), SrcPort: 7002, DstPort: 40000, Size: 120}
		frames := make([][]byte, n)
		for i := range frames {
			frames[i] = make([]byte, spec.Size)
			spec.Build(frames[i], uint32(i))
			copy(frames[i][traffic.HeaderLen:], fmt.Sprintf("%s %d ", marker, i))
		}
		for sent := 0; sent < n; sent += 25 {
			if err := sender.SendFrames(0, frames[sent:sent+25]); err != nil {
				t.Fatal(err)
			}
			time.Sleep(5 * time.Millisecond)
		}
		got, err := Call[vmproto.UDPCountResult](g1, vmproto.UDPCount{Port: 40000, Marker: marker, Want: n, Timeout: wait})
		if err != nil {
			t.Fatal(err)
		}
		return got.Matched
	}
	if got := burst(fmt.Sprintf("before-%d", os.Getpid()), 10*time.Second); got != n {
		t.Fatalf("before any program, the guest got %d of %d datagrams", got, n)
	}

	res := agent(t, g1, "--json", "caps")
	if res.ExitCode != 0 || !strings.Contains(res.Output, `"helpers"`) || !strings.Contains(res.Output, `"vm": "vm1"`) {
		t.Fatalf("caps: %+v", res)
	}
	res = agent(t, g1, "--json", "submit", "/tmp/ddos.o")
	var rec daemon.ProgramRecord
	if res.ExitCode != 0 || json.Unmarshal([]byte(res.Output), &rec) != nil || rec.ID == 0 {
		t.Fatalf("submit: %+v", res)
	}
	t.Logf("the guest's agent loaded program %d", rec.ID)
	// The VM owner's control program would fill the filter's map; here
	// the host does: block the wire side's address.
	blocked, ok := vm1.GuestMap("blocked")
	if !ok {
		t.Fatal("ddos_filter's map is not there")
	}
	key := make([]byte, 8)
	binary.LittleEndian.PutUint32(key, 32)
	copy(key[4:], topo.WireIP.To4())
	if err := blocked.Put(key, uint64(0)); err != nil {
		t.Fatal(err)
	}
	before, _ := vm1.Verdicts()
	if got := burst(fmt.Sprintf("blocked-%d", os.Getpid()), 2*time.Second); got != 0 {
		t.Errorf("with the filter loaded, the guest still got %d of %d datagrams from a blocked address", got, n)
	}
	after, _ := vm1.Verdicts()
	if dropped := after.Drop.Packets - before.Drop.Packets; dropped != n {
		t.Errorf("the filter dropped %d frames, want %d", dropped, n)
	}

	// The other VM's agent: its own VM only.
	res = agent(t, g2, "--json", "status")
	if res.ExitCode != 0 || !strings.Contains(res.Output, `"vm": "vm2"`) || strings.Contains(res.Output, `"program"`) {
		t.Errorf("vm2's status: %+v", res)
	}
	res = agent(t, g2, "rm", "--expect", fmt.Sprint(rec.ID))
	if res.ExitCode != 1 || !strings.Contains(res.Output, "conflict") {
		t.Errorf("vm2 removing vm1's program: %+v", res)
	}
	if cur, _ := d.Programs.Current("vm1"); cur != rec.ID {
		t.Fatalf("vm1's program changed to %d through vm2's agent", cur)
	}

	// Replace, then remove, from the owner's guest.
	res = agent(t, g1, "--json", "replace", "--expect", fmt.Sprint(rec.ID), "/tmp/fwd.o")
	var rec2 daemon.ProgramRecord
	if res.ExitCode != 0 || json.Unmarshal([]byte(res.Output), &rec2) != nil || rec2.ID <= rec.ID {
		t.Fatalf("replace: %+v", res)
	}
	before, _ = vm1.Verdicts()
	if got := burst(fmt.Sprintf("forwarder-%d", os.Getpid()), 10*time.Second); got != n {
		after, _ = vm1.Verdicts()
		t.Errorf("with port_forward (nothing to forward), the guest got %d of %d datagrams; verdicts before %+v after %+v", got, n, before, after)
	}
	res = agent(t, g1, "status")
	if res.ExitCode != 0 || !strings.Contains(res.Output, fmt.Sprintf("id: %d", rec2.ID)) {
		t.Errorf("status: %+v", res)
	}
	res = agent(t, g1, "rm", "--expect", fmt.Sprint(rec2.ID))
	if res.ExitCode != 0 {
		t.Fatalf("rm: %+v", res)
	}
	if cur, _ := d.Programs.Current("vm1"); cur != 0 {
		t.Errorf("after rm, vm1 runs %d", cur)
	}

	// Garbage on the channel from inside the guest: the daemon answers,
	// resets the channel, QEMU reconnects, and the agent works again.
	garbage := `for p in /sys/class/virtio-ports/*; do if [ "$(cat $p/name)" = org.xdp-hostd.agent.0 ]; then head -c 4096 /dev/urandom > /dev/$(basename $p); fi; done`
	if r, err := Call[vmproto.ExecResult](g1, vmproto.Exec{Argv: []string{"sh", "-c", garbage}}); err != nil || r.ExitCode != 0 {
		t.Fatalf("write garbage: %v %+v", err, r)
	}
	ok = false
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if r := agent(t, g1, "--timeout", "3s", "caps"); r.ExitCode == 0 {
			ok = true
			break
		}
	}
	if !ok {
		t.Error("the agent channel did not come back after garbage")
	}
	if _, ok := d.VM("vm1"); !ok {
		t.Error("the daemon lost vm1")
	}
}
