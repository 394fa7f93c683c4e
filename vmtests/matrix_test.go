package vmtests

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	hostbpf "github.com/xdp-hostd/xdp-hostd/bpf"
	"github.com/xdp-hostd/xdp-hostd/client"
	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/nsrun"
	"github.com/xdp-hostd/xdp-hostd/traffic"
	"github.com/xdp-hostd/xdp-hostd/vmtests/vmproto"
)

// The delivery modes of the matrix's columns.
const (
	deliverTap      = "tap"
	deliverCopy     = "vhost-user"
	deliverZeroCopy = "zerocopy"
)

// zeroCopyVMConfig is what the zero-copy column adds to a vhost-user VM's
// configuration (merged into its JSON object). Adjust it here if the
// daemon's field is named otherwise.
const zeroCopyVMConfig = `{"delivery_mode": "zerocopy"}`

// matrixExample is the example guest program of the matrix's second
// program row: port_forward, which passes what it has no rule for (it has
// none here), so every frame must still arrive.
const matrixExample = "port_forward"

// The VM test matrix: {tap, vhost-user copy, vhost-user zero-copy} x {1, 2
// queue pairs} x {built-in program, an example guest program}. One daemon
// and one guest per delivery x queues row (the program is swapped through
// the daemon's API between the two cells of a row, a swap the product
// does to running VMs). Each cell: ARP and ping both ways (neighbor
// caches flushed first on both sides) and a counted UDP burst each way,
// spread over every queue pair in the 2-queue rows, exact counts.
//
// The zero-copy row fails when the daemon does not offer the mode in the
// VM's caps or any queue pair falls back to copy with the real guest (a
// fallback would pass the cells on the copy path).
func TestVMMatrix(t *testing.T) {
	SkipWithoutQEMU(t)
	testnet.RequireRoot(t)
	start := time.Now()
	for _, mode := range []string{deliverTap, deliverCopy, deliverZeroCopy} {
		for _, queues := range []int{1, 2} {
			t.Run(fmt.Sprintf("%s/%dq", mode, queues), func(t *testing.T) {
				rowStart := time.Now()
				matrixRow(t, mode, queues)
				t.Logf("row %s/%dq took %v", mode, queues, time.Since(rowStart).Round(time.Millisecond))
			})
		}
	}
	t.Logf("the matrix took %v", time.Since(start).Round(time.Millisecond))
}

// zeroCopyUnavailable fails t: the daemon has a zero-copy mode, and the
// matrix's zero-copy cells are its real-guest test.
func zeroCopyUnavailable(t *testing.T, why string) {
	t.Helper()
	t.Fatal("zerocopy not available: " + why)
}

// matrixConfig is the daemon's configuration for one row.
func matrixConfig(t *testing.T, mode string, queues int, topo *hostnet.Topology, vmc daemon.VMConfig, sockDir string) *daemon.Config {
	t.Helper()
	cfg := &daemon.Config{VMSocketDirs: []string{sockDir}, Uplinks: []daemon.UplinkConfig{{Name: topo.Uplink, NetNS: topo.HostNS, VMs: []daemon.VMConfig{vmc}}}}
	if mode != deliverZeroCopy {
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	// Through JSON, the way an operator writes it: this compiles whether
	// or not the daemon has the field.
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	json.Unmarshal(b, &doc)
	vm := doc["uplinks"].([]any)[0].(map[string]any)["vms"].([]any)[0].(map[string]any)
	var extra map[string]any
	if err := json.Unmarshal([]byte(zeroCopyVMConfig), &extra); err != nil {
		t.Fatal(err)
	}
	for k, v := range extra {
		vm[k] = v
	}
	b, _ = json.Marshal(doc)
	zc, err := daemon.ParseConfig(b, "matrix config")
	if err != nil {
		zeroCopyUnavailable(t, fmt.Sprintf("the daemon refuses a VM with %s: %v", zeroCopyVMConfig, err))
	}
	return zc
}

// apiGet returns the body of GET path on the daemon's API socket.
func apiGet(t *testing.T, sock, path string) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	resp, err := c.Get("http://xdp-hostd/" + daemon.APIVersion + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %s %v", path, resp.Status, b, err)
	}
	return string(b)
}

func matrixRow(t *testing.T, mode string, queues int) {
	const (
		vmName   = "mx"
		guestMAC = "52:54:00:00:ac:01"
		guestIP  = "10.201.0.70"
	)
	topo := testnet.Topology(t, queues)
	vu := TempSocketPath(t, "vu.sock")
	apiSock := filepath.Join(filepath.Dir(vu), "api.sock")
	vmc := daemon.VMConfig{Name: vmName, MAC: guestMAC}
	for q := range queues {
		vmc.Queues = append(vmc.Queues, q)
	}
	tapName := topo.Prefix + "tp"
	if mode == deliverTap {
		vmc.Delivery, vmc.Tap, vmc.TapQueues, vmc.TapMode = "tap", tapName, queues, "qemu"
	} else {
		vmc.Delivery, vmc.VhostUserSocket = "vhost-user", vu
	}
	cfg := matrixConfig(t, mode, queues, topo, vmc, filepath.Dir(vu))
	d, err := daemon.Start(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	api, err := daemon.ListenAPI(apiSock, "")
	if err != nil {
		t.Fatal(err)
	}
	api.Serve(d)
	t.Cleanup(func() { api.Close() })
	if mode == deliverZeroCopy {
		// A value "zerocopy" (not merely a mention, such as a fallback's
		// reason) in caps and in the VM's status.
		if caps := apiGet(t, apiSock, "/caps?vm="+vmName); !jsonHasValue(caps, deliverZeroCopy) {
			zeroCopyUnavailable(t, "the daemon's caps do not offer it: "+caps)
		}
		if show := apiGet(t, apiSock, "/vms/"+vmName); !jsonHasValue(show, deliverZeroCopy) {
			zeroCopyUnavailable(t, "the daemon did not keep the VM in zerocopy mode (fell back to copy?): "+show)
		}
	}

	opts := []Option{WithName(fmt.Sprintf("mx-%s-%dq", mode, queues)), WithTimeout(6 * time.Minute)}
	if mode == deliverTap {
		opts = append(opts, WithNetNS(topo.HostNS), WithTapNIC(TapNIC{Ifname: tapName, MAC: guestMAC, Queues: queues}))
	} else {
		// INTx (vectors=0): QEMU 7.2 under TCG segfaults at boot with
		// MSI-X on vhost-user NICs (see VhostUserNIC.Vectors).
		opts = append(opts, WithVhostUserNIC(VhostUserNIC{Socket: vu, MAC: guestMAC, Queues: queues}))
	}
	g := StartT(t, opts...)
	gc, err := Call[vmproto.ConfigureResult](g, vmproto.Configure{MAC: guestMAC, Addr: guestIP + "/24", Channels: queues})
	if err != nil {
		t.Fatal(err)
	}
	if !gc.Carrier || gc.Channels != queues {
		t.Fatalf("guest NIC: want carrier and %d queue pairs enabled: %+v", queues, gc)
	}
	if mode == deliverZeroCopy {
		// The guest's front-end is up: every queue pair must be in
		// zero-copy now, not fallen back to copy (which would pass the
		// cell on the copy path).
		var zs struct {
			ZeroCopy struct {
				Active   []bool `json:"active"`
				Fallback string `json:"fallback"`
			} `json:"zero_copy"`
		}
		active := func() bool {
			zs.ZeroCopy.Active = nil
			if err := json.Unmarshal([]byte(apiGet(t, apiSock, "/vms/"+vmName)), &zs); err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, a := range zs.ZeroCopy.Active {
				if a {
					n++
				}
			}
			return n == queues
		}
		for deadline := time.Now().Add(20 * time.Second); !active(); time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("zero-copy not active on all %d queue pairs with a real guest: active %v, fallback %q", queues, zs.ZeroCopy.Active, zs.ZeroCopy.Fallback)
			}
		}
	}
	vm, _ := d.VM(vmName)
	c := client.New(apiSock)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)

	cell := matrixCell{t: t, g: g, vm: vm, mode: mode, topo: topo, ifname: gc.Name, queues: queues,
		mac: guestMAC, ip: netip.MustParseAddr(guestIP), sender: testnet.Sender(t, topo)}
	t.Run("builtin", func(t *testing.T) {
		if cur, _ := d.Programs.Current(vmName); cur != 0 {
			t.Fatalf("the VM runs program %d, want the built-in one", cur)
		}
		cell.t = t
		cell.run("builtin")
	})
	t.Run("example", func(t *testing.T) {
		obj, err := hostbpf.Example(matrixExample)
		if err != nil {
			t.Fatal(err)
		}
		rec, err := c.Load(ctx, vmName, obj, "")
		if err != nil {
			t.Fatalf("load %s through the API: %v", matrixExample, err)
		}
		t.Cleanup(func() { c.Remove(ctx, vmName, rec.ID) })
		cell.t = t
		before, _ := vm.Verdicts()
		cell.run("example")
		after, _ := vm.Verdicts()
		if cur, _ := d.Programs.Current(vmName); cur != rec.ID {
			t.Errorf("the VM runs program %d, want %s (%d)", cur, matrixExample, rec.ID)
		}
		if passed := after.Pass.Packets - before.Pass.Packets; passed < uint64(matrixBurst) {
			t.Errorf("%s passed %d frames, want at least the %d of the burst", matrixExample, passed, matrixBurst)
		}
	})
}

// matrixBurst is the size of each counted UDP burst.
const matrixBurst = 200

type matrixCell struct {
	t      *testing.T
	g      *VM
	vm     *hostnet.VM
	topo   *hostnet.Topology
	ifname string // the guest's NIC
	mode   string
	queues int
	mac    string
	ip     netip.Addr
	sender *traffic.Sender
}

// flushWireNeighbor forgets the wire side's ARP entry for ip.
func flushWireNeighbor(topo *hostnet.Topology, ip net.IP) error {
	return nsrun.Do(topo.WireNS, func() error {
		link, err := netlink.LinkByName(topo.Wire)
		if err != nil {
			return err
		}
		err = netlink.NeighDel(&netlink.Neigh{LinkIndex: link.Attrs().Index, Family: netlink.FAMILY_V4, IP: ip})
		if err != nil && !os.IsNotExist(err) && !strings.Contains(err.Error(), "no such file") {
			return fmt.Errorf("delete neighbor %s: %w", ip, err)
		}
		return nil
	})
}

func (c *matrixCell) exec(argv ...string) string {
	c.t.Helper()
	r, err := Call[vmproto.ExecResult](c.g, vmproto.Exec{Argv: argv, Timeout: 10 * time.Second})
	if err != nil || r.ExitCode != 0 {
		c.t.Fatalf("guest: %v: %v %+v", argv, err, r)
	}
	return r.Output
}

func (c *matrixCell) run(name string) {
	t := c.t
	marker := fmt.Sprintf("mx%d-%s", os.Getpid(), name)
	st0, _ := c.vm.Verdicts()

	// ARP + ping, wire -> guest: the wire side must resolve the guest.
	if err := flushWireNeighbor(c.topo, c.ip.AsSlice()); err != nil {
		t.Fatal(err)
	}
	rtt, err := pingFrom(c.topo.WireNS, c.ip.AsSlice(), 10*time.Second)
	if err != nil {
		t.Fatalf("ARP/ping from the wire side: %v", err)
	}
	// ARP + ping, guest -> wire: the guest must resolve the wire side.
	c.exec("ip", "neigh", "flush", "dev", c.ifname)
	pr, err := Call[vmproto.PingResult](c.g, vmproto.Ping{Addr: c.topo.WireIP.String(), Count: 3, Timeout: 5 * time.Second})
	if err != nil || pr.Received == 0 {
		t.Fatalf("ARP/ping from the guest: %+v %v", pr, err)
	}
	t.Logf("wire -> guest ping %v; guest -> wire %d/%d", rtt, pr.Received, pr.Sent)

	// Counted burst, wire -> guest, spread over every uplink queue of the VM.
	if _, err := c.g.Do(vmproto.UDPListen{Port: 40000}); err != nil {
		t.Fatal(err)
	}
	mac, _ := net.ParseMAC(c.mac)
	wireIP, _ := netip.AddrFromSlice(c.topo.WireIP.To4())
	spec := traffic.FrameSpec{Dst: mac, Src: c.topo.WireMAC, SrcIP: wireIP, DstIP: c.ip, SrcPort: 7002, DstPort: 40000, Size: 120}
	in := marker + "-in"
	frames := make([][]byte, matrixBurst)
	for i := range frames {
		frames[i] = make([]byte, spec.Size)
		if _, err := spec.Build(frames[i], uint32(i)); err != nil {
			t.Fatal(err)
		}
		copy(frames[i][traffic.HeaderLen:], fmt.Sprintf("%s %d ", in, i))
	}
	before, _ := c.vm.Verdicts()
	gBefore := c.guestCounters()
	const batch = 25
	perQueue := make([]int, c.queues)
	for sent := 0; sent < matrixBurst; sent += batch {
		q := (sent / batch) % c.queues
		if err := sendOnCPU(q, func() error { return c.sender.SendFrames(q, frames[sent:sent+batch]) }); err != nil {
			t.Fatal(err)
		}
		perQueue[q] += batch
		time.Sleep(5 * time.Millisecond)
	}
	got, err := Call[vmproto.UDPCountResult](c.g, vmproto.UDPCount{Port: 40000, Marker: in, Want: matrixBurst, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	after, _ := c.vm.Verdicts()
	if got.Matched != matrixBurst || got.Seqs != matrixBurst {
		t.Errorf("wire -> guest: the guest got %d of %d datagrams (%d distinct): %+v; verdicts before %+v after %+v", got.Matched, matrixBurst, got.Seqs, got, before, after)
	}
	if u := after.Undelivered.Packets - before.Undelivered.Packets; u != 0 {
		t.Errorf("wire -> guest: %d frames passed but undelivered", u)
	}
	gAfter := c.guestCounters()
	for q := range c.queues {
		d := queueDelta(gBefore, gAfter, "rx", q)
		t.Logf("wire -> guest: uplink queue %d got %d frames of the burst, guest RX queue %d %d", q, perQueue[q], q, d)
		// vhost-user: uplink queue i feeds queue pair i. A tap's XDP
		// transmit picks queue CPU % queues, and queue i's burst was
		// received on CPU i (sendOnCPU).
		if (c.mode != deliverTap || runtime.NumCPU() >= c.queues) && d < uint64(perQueue[q]) {
			t.Errorf("wire -> guest: guest RX queue %d took %d frames, want at least the %d sent on uplink queue %d", q, d, perQueue[q], q)
		}
	}

	// Counted bursts, guest -> wire; with 2 queue pairs, one burst per
	// guest TX queue (steered with XPS).
	conn, err := traffic.ListenUDP(c.topo.WireNS, c.topo.WireIP, 7003)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for q := range c.queues {
		if c.queues > 1 {
			var script strings.Builder
			for i := range c.queues {
				mask := "0"
				if i == q {
					mask = "1"
				}
				fmt.Fprintf(&script, "echo %s > /sys/class/net/%s/queues/tx-%d/xps_cpus; ", mask, c.ifname, i)
			}
			c.exec("sh", "-c", script.String())
		}
		txBefore := c.guestCounters()
		out := fmt.Sprintf("%s-out%d", marker, q)
		n := matrixBurst / c.queues
		sent, err := Call[vmproto.UDPSendResult](c.g, vmproto.UDPSend{Dst: fmt.Sprintf("%s:7003", c.topo.WireIP), Count: n, Size: 100, Marker: out, Interval: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if arrived := countDatagrams(conn, []byte(out), n, 10*time.Second); arrived != n || sent.Sent != n {
			t.Errorf("guest -> wire (TX queue %d): the wire side got %d; the guest sent %d of %d; wire side's UDP counters: %s", q, arrived, sent.Sent, n, udpCounters(c.topo.WireNS))
		}
		if d := queueDelta(txBefore, c.guestCounters(), "tx", q); d < uint64(n) {
			t.Errorf("guest -> wire: guest TX queue %d sent %d frames, want at least %d (XPS steering)", q, d, n)
		}
	}
	st1, _ := c.vm.Verdicts()
	if st1.Spoofed.Packets != st0.Spoofed.Packets {
		t.Errorf("the guest's own frames were counted as spoofed: %+v", st1)
	}
}

// udpCounters is the Udp lines of /proc/net/snmp in the namespace at ns.
func udpCounters(ns string) string {
	var out string
	nsrun.Do(ns, func() error {
		b, err := os.ReadFile("/proc/thread-self/net/snmp")
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "Udp:") {
				out += l + "\n"
			}
		}
		return err
	})
	return out
}

// guestCounters reads the guest NIC's counters, ethtool -S included.
func (c *matrixCell) guestCounters() vmproto.CountersResult {
	c.t.Helper()
	r, err := Call[vmproto.CountersResult](c.g, vmproto.Counters{MAC: c.mac})
	if err != nil {
		c.t.Fatalf("guest counters: %v", err)
	}
	return r
}

// queueDelta is how much dir ("rx" or "tx") queue q's packet count grew.
func queueDelta(before, after vmproto.CountersResult, dir string, q int) uint64 {
	k := fmt.Sprintf("%s_queue_%d_packets", dir, q)
	return after.Ethtool[k] - before.Ethtool[k]
}

// sendOnCPU runs send on CPU cpu (modulo the CPUs there are): a veth
// receives on the sender's CPU, and a tap's XDP transmit picks its queue by
// CPU, so the tap rows spread their bursts over the tap's queues too.
func sendOnCPU(cpu int, send func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return send()
	}
	var set unix.CPUSet
	set.Set(cpu % runtime.NumCPU())
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return send()
	}
	defer unix.SchedSetaffinity(0, &old)
	return send()
}

// jsonHasValue says whether the JSON document doc holds the string value
// want anywhere, or a key want set to true.
func jsonHasValue(doc, want string) bool {
	var v any
	if json.Unmarshal([]byte(doc), &v) != nil {
		return false
	}
	var walk func(any) bool
	walk = func(v any) bool {
		switch x := v.(type) {
		case string:
			return x == want
		case []any:
			for _, e := range x {
				if walk(e) {
					return true
				}
			}
		case map[string]any:
			for k, e := range x {
				if b, ok := e.(bool); (ok && b && k == want) || walk(e) {
					return true
				}
			}
		}
		return false
	}
	return walk(v)
}
