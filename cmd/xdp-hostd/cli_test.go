package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/demo"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/testpmd"
	"github.com/xdp-hostd/xdp-hostd/traffic"
)

// binary is xdp-hostd built once for the tests that run it as a user would.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "xdp-hostd-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Chmod(dir, 0o755) // the not-root test runs it as nobody
	binary = filepath.Join(dir, "xdp-hostd")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build xdp-hostd: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// The demo runs and its JSON says every VM got exactly its packets.
func TestDemoJSON(t *testing.T) {
	testnet.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "demo", "--json", "--packets", "300")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("demo: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	var rep demo.Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("demo --json output: %v\n%s", err, stdout.String())
	}
	if !rep.OK || len(rep.VMs) != 2 {
		t.Fatalf("report not OK: %+v", rep)
	}
	for _, vm := range rep.VMs {
		if vm.Sent != 600 || vm.Delivered != vm.Sent || vm.Misdelivered != 0 || vm.Verdicts.Pass.Packets != vm.Sent {
			t.Errorf("%s: %+v", vm.Name, vm)
		}
		if vm.TXArrived != vm.TXSent-vm.TXSpoofed || vm.TXCounters.Spoofed.Packets != vm.TXSpoofed {
			t.Errorf("%s transmit: %+v", vm.Name, vm)
		}
	}
	if rep.Host.Received != rep.Host.Sent || rep.Host.ReachedVMs != 0 {
		t.Errorf("host: %+v", rep.Host)
	}
}

type runResult struct {
	code   int
	stderr string
}

// runDaemon runs `xdp-hostd run --config` with cfg and waits (at most 30 s)
// for it to exit.
func runDaemon(t *testing.T, cfg string, cred *syscall.Credential) runResult {
	t.Helper()
	// Beside the binary: readable for the test that runs as nobody.
	f, err := os.CreateTemp(filepath.Dir(binary), "config-*.json")
	if err != nil {
		t.Fatal(err)
	}
	path := f.Name()
	t.Cleanup(func() { os.Remove(path) })
	f.WriteString(cfg)
	f.Close()
	os.Chmod(path, 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A socket of its own: the default one may be another daemon's.
	cmd := exec.CommandContext(ctx, binary, "run", "--config", path, "--socket", filepath.Join(t.TempDir(), "api.sock"))
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return runResult{code, stderr.String()}
}

// leftovers lists what xdp-hostd could have left in the host namespace: XDP
// programs on its interfaces, interfaces beyond the ones the test made, and
// XDP bpf_links anywhere.
func leftovers(t *testing.T, topo *hostnet.Topology, keep ...string) []string {
	t.Helper()
	h, err := netlink.NewHandleAt(testnet.Runner(t, topo.HostNS).Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	allowed := map[string]bool{"lo": true, topo.Uplink: true}
	for _, k := range keep {
		allowed[k] = true
	}
	for _, l := range links {
		a := l.Attrs()
		if !allowed[a.Name] {
			out = append(out, "interface "+a.Name)
		}
		if x := a.Xdp; x != nil && x.Attached && a.Name == topo.Uplink {
			out = append(out, fmt.Sprintf("XDP program %d on %s", x.ProgId, a.Name))
		}
	}
	return out
}

func vmJSON(name, mac string, queues string) string {
	return fmt.Sprintf(`{"name": %q, "mac": %q, "queues": %s}`, name, mac, queues)
}

func uplinkJSON(topo *hostnet.Topology, extra string, vms ...string) string {
	return fmt.Sprintf(`{"uplinks": [{"name": %q, "netns": %q%s, "vms": [%s]}]}`, topo.Uplink, topo.HostNS, extra, strings.Join(vms, ", "))
}

// Every error case: a clear message, a non-zero exit, nothing left behind.
func TestRunErrors(t *testing.T) {
	testnet.RequireRoot(t)
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, topo *hostnet.Topology) (cfg string, keep []string)
		cred  *syscall.Credential
		want  []string
	}{
		{
			name: "missing interface",
			setup: func(t *testing.T, topo *hostnet.Topology) (string, []string) {
				return fmt.Sprintf(`{"uplinks": [{"name": "nope0", "netns": %q, "vms": []}]}`, topo.HostNS), nil
			},
			want: []string{`uplink "nope0": no such network interface`, "ip link"},
		},
		{
			name: "no XDP support",
			setup: func(t *testing.T, topo *hostnet.Topology) (string, []string) {
				err := testnet.Runner(t, topo.HostNS).Do(func() error {
					// A bridge device has no native XDP.
					if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}); err != nil {
						return err
					}
					l, err := netlink.LinkByName("br0")
					if err != nil {
						return err
					}
					return netlink.LinkSetUp(l)
				})
				if err != nil {
					t.Fatal(err)
				}
				return fmt.Sprintf(`{"uplinks": [{"name": "br0", "netns": %q, "xdp_mode": "native", "vms": []}]}`, topo.HostNS), []string{"br0"}
			},
			want: []string{"br0", "no native XDP support", `"xdp_mode" to "generic"`},
		},
		{
			name: "queue out of range",
			setup: func(t *testing.T, topo *hostnet.Topology) (string, []string) {
				return uplinkJSON(topo, "", vmJSON("vm1", "02:00:00:00:00:01", "[1]"), vmJSON("vm2", "02:00:00:00:00:02", "[7]")), nil
			},
			want: []string{"queue 7 is out of range", "RX queues 0-3"},
		},
		{
			name: "duplicate MAC",
			setup: func(t *testing.T, topo *hostnet.Topology) (string, []string) {
				return uplinkJSON(topo, "", vmJSON("vm1", "02:00:00:00:00:01", "[1]"), vmJSON("vm2", "02:00:00:00:00:01", "[2]")), nil
			},
			want: []string{"MAC 02:00:00:00:00:01 is already VM vm1's"},
		},
		{
			name: "duplicate queue",
			setup: func(t *testing.T, topo *hostnet.Topology) (string, []string) {
				return uplinkJSON(topo, "", vmJSON("vm1", "02:00:00:00:00:01", "[1]"), vmJSON("vm2", "02:00:00:00:00:02", "[2, 1]")), nil
			},
			want: []string{"queue 1 is already dedicated to VM vm1"},
		},
		{
			name: "not root",
			setup: func(t *testing.T, topo *hostnet.Topology) (string, []string) {
				return uplinkJSON(topo, "", vmJSON("vm1", "02:00:00:00:00:01", "[1]")), nil
			},
			cred: &syscall.Credential{Uid: 65534, Gid: 65534},
			want: []string{"needs root"},
		},
		{
			name: "BPF filesystem missing",
			setup: func(t *testing.T, topo *hostnet.Topology) (string, []string) {
				file := filepath.Join(t.TempDir(), "not-a-dir")
				os.WriteFile(file, nil, 0o600)
				return fmt.Sprintf(`{"pin_dir": %q, "uplinks": [{"name": %q, "netns": %q, "vms": [%s]}]}`, file, topo.Uplink, topo.HostNS, vmJSON("vm1", "02:00:00:00:00:01", "[1]")), nil
			},
			want: []string{"BPF filesystem", "not a directory", "mount -t bpf bpf /sys/fs/bpf"},
		},
		{
			name: "bad configuration",
			setup: func(t *testing.T, topo *hostnet.Topology) (string, []string) {
				return uplinkJSON(topo, "", vmJSON("vm1", "02:00:00:00:00:zz", "[1]")), nil
			},
			want: []string{"uplinks[0].vms[0]: mac:", "52:54:00:12:34:56"},
		},
		{
			name: "unknown field",
			setup: func(t *testing.T, topo *hostnet.Topology) (string, []string) {
				return fmt.Sprintf(`{"uplinks": [{"name": %q, "queue": 1}]}`, topo.Uplink), nil
			},
			want: []string{`unknown field "queue"`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topo := testnet.Topology(t, 4)
			cfg, keep := tc.setup(t, topo)
			res := runDaemon(t, cfg, tc.cred)
			if res.code != 1 {
				t.Errorf("exit code %d, want 1; stderr:\n%s", res.code, res.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(res.stderr, w) {
					t.Errorf("stderr does not say %q:\n%s", w, res.stderr)
				}
			}
			if l := leftovers(t, topo, keep...); len(l) > 0 {
				t.Errorf("left behind: %v", l)
			}
		})
	}
}

// An uplink that already runs an XDP program is refused and keeps it.
func TestRunRefusesTakeover(t *testing.T) {
	testnet.RequireRoot(t)
	topo := testnet.Topology(t, 2)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	err = testnet.Runner(t, topo.HostNS).Do(func() error {
		l, err := netlink.LinkByName(topo.Uplink)
		if err != nil {
			return err
		}
		return netlink.LinkSetXdpFdWithFlags(l, prog.FD(), 1<<2)
	})
	if err != nil {
		t.Fatal(err)
	}
	res := runDaemon(t, uplinkJSON(topo, "", vmJSON("vm1", "02:00:00:00:00:01", "[1]")), nil)
	if res.code != 1 || !strings.Contains(res.stderr, "already runs XDP program") || !strings.Contains(res.stderr, `"force": true`) {
		t.Errorf("exit %d, stderr:\n%s", res.code, res.stderr)
	}
	l := leftovers(t, topo)
	if len(l) != 1 || !strings.HasPrefix(l[0], "XDP program") {
		t.Errorf("the existing program must stay and nothing else appear: %v", l)
	}
}

// run serves until SIGTERM, with pins, and removes everything when it stops.
func TestRunServesAndCleansUp(t *testing.T) {
	testnet.RequireRoot(t)
	topo := testnet.Topology(t, 4)
	pins := t.TempDir()
	t.Cleanup(func() { unix.Unmount(pins, unix.MNT_DETACH) })
	cfg := fmt.Sprintf(`{"pin_dir": %q, "uplinks": [{"name": %q, "netns": %q, "vms": [%s]}]}`,
		pins, topo.Uplink, topo.HostNS, `{"name": "vm1", "mac": "02:00:00:00:00:01", "queues": [1], "tap": "vm1tap", "tap_queues": 2}`)
	d := runDaemonBinary(t, cfg)
	defer d.cmd.Process.Kill()
	if l := leftovers(t, topo, "vm1tap"); len(l) != 1 || !strings.HasPrefix(l[0], "XDP program") {
		t.Errorf("while running, want the dispatcher on the uplink and the tap: %v", l)
	}
	entries, _ := os.ReadDir(filepath.Join(pins, topo.Uplink))
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) != 4 || names[0] != "flood_link" || names[1] != "link" || !strings.HasPrefix(names[2], "prog-") || !strings.HasPrefix(names[3], "tx-") {
		t.Errorf("pins: %v, want flood_link, link, prog-<id>, tx-<ifindex>", names)
	}
	if err := d.stop(t); err != nil {
		t.Errorf("exit: %v\n%s", err, d.stderr.String())
	}
	if l := leftovers(t, topo); len(l) > 0 {
		t.Errorf("left behind: %v", l)
	}
	entries, _ = os.ReadDir(pins)
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".debug") { // a fresh bpffs's own iterators
			t.Errorf("pin left: %s", e.Name())
		}
	}
}

// syncBuffer collects a child process's output while the test reads it.
type syncBuffer = testnet.SyncBuffer

// A vhost-user VM from the configuration: the daemon serves its socket,
// DPDK testpmd connects as the VM's virtio front-end and receives what is
// sent to the VM's queue; stopping the daemon removes the socket.
func TestRunVhostUserVM(t *testing.T) {
	testnet.RequireRoot(t)
	testpmd.Require(t)
	topo := testnet.Topology(t, 4)
	dir := t.TempDir()
	vsock := filepath.Join(dir, "vm1.sock")
	cfg := fmt.Sprintf(`{"vm_socket_dirs": [%q], "uplinks": [{"name": %q, "netns": %q, "vms": [{"name": "vm1", "mac": "02:00:00:00:00:01", "queues": [2], "delivery": "vhost-user", "vhost_user_socket": %q}]}]}`,
		dir, topo.Uplink, topo.HostNS, vsock)
	metrics := freeLoopbackAddr(t)
	d := runDaemonBinary(t, cfg, "--metrics", metrics)
	defer d.cmd.Process.Kill()
	pmd, err := testpmd.Start(testpmd.Options{Vdevs: []string{"net_virtio_user0,path=" + vsock + ",queues=1,mac=02:00:00:00:00:01"}, Mode: "rxonly", Prefix: "xhclivu"})
	if err != nil {
		t.Fatal(err)
	}
	defer pmd.Stop()
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(pmd.Output(), "NIC statistics"); {
		if time.Now().After(deadline) {
			t.Fatalf("testpmd did not start:\n%s", pmd.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	spec := traffic.FrameSpec{Dst: net.HardwareAddr{2, 0, 0, 0, 0, 1}, Src: topo.WireMAC, Size: 100, Tag: 1}
	if err := testnet.Sender(t, topo).Send(spec, 2, 0, 1000); err != nil {
		t.Fatal(err)
	}
	var rx uint64
	for deadline := time.Now().Add(15 * time.Second); rx < 1000 && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		rx, _ = pmd.Stats()
	}
	if rx != 1000 {
		t.Errorf("testpmd received %d of 1000 frames", rx)
	}
	// The metrics show the frames at each stage: the VM program's verdict,
	// the AF_XDP socket on queue 2, the port and the guest's RX virtqueue.
	body := scrape(t, metrics)
	vm := `uplink="` + topo.Uplink + `",vm="vm1"`
	for _, want := range []string{
		`xdp_hostd_vm_verdict_packets_total{uplink="` + topo.Uplink + `",verdict="pass",vm="vm1"} 1000`,
		`xdp_hostd_xsk_rx_frames_total{rx_queue="2",` + vm + `} 1000`,
		`xdp_hostd_xsk_rx_ring_full_total{rx_queue="2",` + vm + `} 0`,
		`xdp_hostd_vhost_frames_total{outcome="rx_delivered",` + vm + `} 1000`,
		`xdp_hostd_vhost_queue_packets_total{dir="rx",uplink="` + topo.Uplink + `",virtqueue="0",vm="vm1"} 1000`,
		`xdp_hostd_vhost_front_end_connected{socket="` + vsock + `",` + vm + `} 1`,
		`# TYPE xdp_hostd_vhost_rx_cpu_seconds_total counter`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s\n%s", want, body)
		}
	}
	// Each family is one group: its HELP once, its samples together.
	seen := map[string]bool{}
	last := ""
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name := strings.FieldsFunc(line, func(r rune) bool { return r == '{' || r == ' ' })[0]
		if name != last && seen[name] {
			t.Errorf("metric %s is not in one group", name)
		}
		seen[name], last = true, name
	}
	if err := d.stop(t); err != nil {
		t.Errorf("exit: %v\n%s", err, d.stderr.String())
	}
	if _, err := os.Stat(vsock); err == nil {
		t.Error("vhost-user socket left behind")
	}
}

// A daemon killed with SIGKILL leaves its pinned dataplane running (the
// pinned link keeps the dispatcher attached and the VM programs loaded);
// `xdp-hostd down` removes it.
func TestKilledDaemonAndDown(t *testing.T) {
	testnet.RequireRoot(t)
	topo := testnet.Topology(t, 4)
	tap, err := hostnet.CreateTap(hostnet.TapOptions{Name: "qemu0", NetNS: topo.HostNS})
	if err != nil {
		t.Fatal(err)
	}
	defer tap.Close()
	pins := t.TempDir()
	t.Cleanup(func() { unix.Unmount(pins, unix.MNT_DETACH) })
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.json")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`{"pin_dir": %q, "uplinks": [{"name": %q, "netns": %q, "vms": [{"name": "vm1", "mac": "02:00:00:00:00:01", "queues": [1], "tap": "qemu0"}]}]}`,
		pins, topo.Uplink, topo.HostNS)), 0o644)
	sock := filepath.Join(dir, "api.sock")
	cmd := exec.Command(binary, "run", "--config", cfgPath, "--socket", sock)
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(stderr.String(), "msg=ready"); {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("not ready:\n%s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()

	// Still forwarding into the VM's tap with the daemon gone.
	reader := testnet.TapCounter(t, tap)
	spec := traffic.FrameSpec{Dst: net.HardwareAddr{2, 0, 0, 0, 0, 1}, Src: topo.WireMAC, Size: 100, Tag: 1}
	if err := testnet.Sender(t, topo).Send(spec, 1, 0, 200); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); reader.Total() < 200 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if got := reader.Total(); got != 200 {
		t.Errorf("with the daemon killed, the VM got %d of 200 frames", got)
	}
	if l := leftovers(t, topo, "qemu0"); len(l) != 1 {
		t.Errorf("the killed daemon's dispatcher should still be attached: %v", l)
	}
	code, out, errs := cli(t, "down", "--config", cfgPath, "--socket", sock)
	if code != 0 || !strings.Contains(out, "removed pins") {
		t.Fatalf("down: exit %d\n%s%s", code, out, errs)
	}
	time.Sleep(100 * time.Millisecond)
	if l := leftovers(t, topo, "qemu0"); len(l) != 0 {
		t.Errorf("after down: %v", l)
	}
	if _, err := os.Stat(sock); err == nil {
		t.Error("the stale API socket is still there")
	}
}

// freeLoopbackAddr returns a 127.0.0.1 address with a port free right now.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// scrape fetches the daemon's Prometheus metrics.
func scrape(t *testing.T, addr string) string {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
