package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/libvirthook"
	"github.com/xdp-hostd/xdp-hostd/traffic"
)

// The libvirt path on a stock libvirt (Debian 12: libvirt 9.0, QEMU 7.2
// under TCG), as the README's libvirt section says, step for step: the
// daemon runs; the hook is installed as /etc/libvirt/hooks/qemu (the one
// there, if any, is put back after); virtlogd and libvirtd are started by
// hand (libvirtd in the uplink's network namespace, so that the taps it
// creates are next to the uplink); domains are defined with the metadata
// and started and destroyed with virsh, and after each step the daemon's
// view is what it should be:
//
//   - vhost-user (memfd shared memory, a NUMA cell, reconnect): QEMU, run
//     as libvirt-qemu, connects to the daemon's socket (libvirt-qemu:kvm
//     0660), and again after the daemon restarts;
//   - a managed tap (libvirt creates it after prepare; started attaches it),
//     also one libvirt names (vnetN), and an unmanaged one (the daemon
//     creates it with QEMU's flags);
//     the managed one starts again after a destroy (release found its VM);
//   - a domain without the metadata: the daemon never hears of it;
//   - one with a bad uplink: its start fails and leaves nothing;
//   - one named like an unrelated VM: its start fails, and its release
//     leaves that VM alone;
//   - a start while the daemon does not answer (SIGSTOP) fails in seconds.
//
// A frame sent to each VM's MAC from the wire shows up in that VM's
// counters. Everything is removed, also on failure.
func TestLibvirtDomains(t *testing.T) {
	testnet.RequireRoot(t)
	virsh := testnet.RequireTool(t, "virsh", "make deps (Debian: libvirt-clients)")
	libvirtd := testnet.RequireTool(t, "libvirtd", "make deps (Debian: libvirt-daemon-system)")
	virtlogd := testnet.RequireTool(t, "virtlogd", "make deps (Debian: libvirt-daemon-system)")
	qemu := testnet.RequireTool(t, "qemu-system-x86_64", "make deps (Debian: qemu-system-x86)")
	nsenter := testnet.RequireTool(t, "nsenter", "util-linux")
	if _, err := user.Lookup(daemon.DefaultQEMUUser); err != nil {
		testnet.SkipOrFail(t, "no user libvirt-qemu: install libvirt-daemon-system (make deps)")
	}
	lockLibvirt(t)
	if live("/run/libvirt/libvirt-sock") {
		testnet.SkipOrFail(t, "a libvirtd runs already (/run/libvirt/libvirt-sock answers): the test starts its own, with its hook; stop the other first")
	}

	start := time.Now()
	topo := testnet.Topology(t, 4)
	p := topo.Prefix // t + 6 hex digits
	sockDir := filepath.Join("/run", "xdp-hostd-test-"+p)
	if err := os.MkdirAll(sockDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	work := t.TempDir()
	os.Chmod(work, 0o755)
	api := filepath.Join(work, "api.sock")
	cfgPath := filepath.Join(work, "config.json")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`{"state_dir": %q, "vm_socket_dirs": [%q], "uplinks": [{"name": %q, "netns": %q, "vms": []}]}`,
		filepath.Join(work, "state"), sockDir, topo.Uplink, topo.HostNS)), 0o644)
	d := runDaemonFixed(t, cfgPath, api)

	// 1. The hook, exactly as the README installs it (with the daemon's
	// socket on its command line: libvirt gives hooks no environment).
	installHook(t, hookScript(binary, api))

	// 2. virtlogd and libvirtd, by hand, stopped by PID.
	if !live("/run/libvirt/virtlogd-sock") {
		startDaemonized(t, "virtlogd", filepath.Join(work, "virtlogd.pid"), virtlogd, "-d", "-p", filepath.Join(work, "virtlogd.pid"))
	}
	startDaemonized(t, "libvirtd", filepath.Join(work, "libvirtd.pid"), nsenter, "--net="+topo.HostNS, libvirtd, "-d", "-p", filepath.Join(work, "libvirtd.pid"))
	vsh := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, virsh, append([]string{"-c", "qemu:///system"}, args...)...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		if _, err := vsh("version"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			out, err := vsh("version")
			t.Fatalf("libvirtd does not answer: %v\n%s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("daemon, hook and libvirtd up after %v", time.Since(start).Round(time.Millisecond))

	// 3. Domains.
	type dom struct {
		name, mac, uplink string
		iface             string // the <interface> element
		vm                bool   // the daemon should have a VM for it
		queue             int    // the uplink queue its frames arrive on
	}
	vsock := filepath.Join(sockDir, p+"-vu.sock")
	asock := filepath.Join(sockDir, p+"-vu.agent.sock")
	mac := func(i int) string { return fmt.Sprintf("52:54:00:%s:%s:%02x", p[1:3], p[3:5], i) }
	vu := dom{name: "xh-" + p + "-vu", mac: mac(1), uplink: topo.Uplink, vm: true, queue: 1,
		iface: fmt.Sprintf(`<interface type='vhostuser'>
      <mac address='%s'/>
      <source type='unix' path='%s' mode='client'>
        <reconnect enabled='yes' timeout='1'/>
      </source>
      <model type='virtio'/>
      <alias name='ua-xh0'/>
    </interface>
    <channel type='unix'>
      <source mode='connect' path='%s'>
        <reconnect enabled='yes' timeout='1'/>
      </source>
      <target type='virtio' name='org.xdp-hostd.agent.0'/>
    </channel>`, mac(1), vsock, asock)}
	managed := dom{name: "xh-" + p + "-tm", mac: mac(2), uplink: topo.Uplink, vm: true,
		iface: fmt.Sprintf(`<interface type='ethernet'>
      <mac address='%s'/>
      <target dev='%sm'/>
      <model type='virtio'/>
    </interface>`, mac(2), p)}
	unmanaged := dom{name: "xh-" + p + "-tu", mac: mac(3), uplink: topo.Uplink, vm: true,
		iface: fmt.Sprintf(`<interface type='ethernet'>
      <mac address='%s'/>
      <target dev='%su' managed='no'/>
      <model type='virtio'/>
    </interface>`, mac(3), p)}
	plain := dom{name: "xh-" + p + "-nm", mac: mac(4),
		iface: fmt.Sprintf(`<interface type='ethernet'>
      <mac address='%s'/>
      <target dev='%sn'/>
      <model type='virtio'/>
    </interface>`, mac(4), p)}
	badUplink := dom{name: "xh-" + p + "-bu", mac: mac(5), uplink: p + "nope",
		iface: fmt.Sprintf(`<interface type='ethernet'>
      <mac address='%s'/>
      <target dev='%sb'/>
      <model type='virtio'/>
    </interface>`, mac(5), p)}
	clash := dom{name: "xh-" + p + "-cl", mac: mac(6), uplink: topo.Uplink,
		iface: fmt.Sprintf(`<interface type='ethernet'>
      <mac address='%s'/>
      <target dev='%sc'/>
      <model type='virtio'/>
    </interface>`, mac(6), p)}
	auto := dom{name: "xh-" + p + "-ta", mac: mac(8), uplink: topo.Uplink,
		iface: fmt.Sprintf(`<interface type='ethernet'>
      <mac address='%s'/>
      <model type='virtio'/>
    </interface>`, mac(8))}
	all := []dom{vu, managed, unmanaged, plain, badUplink, clash, auto}
	t.Cleanup(func() {
		for _, dm := range all {
			vsh("destroy", dm.name)
			vsh("undefine", dm.name)
			os.Remove("/var/log/libvirt/qemu/" + dm.name + ".log")
		}
	})
	for _, dm := range all {
		xmlPath := filepath.Join(work, dm.name+".xml")
		os.WriteFile(xmlPath, []byte(domainXML(dm.name, qemu, dm.mac, dm.uplink, dm.iface, dm.queue)), 0o644)
		if out, err := vsh("define", xmlPath); err != nil {
			t.Fatalf("define %s: %v\n%s", dm.name, err, out)
		}
	}

	vms := func() map[string]daemon.VMStatus {
		t.Helper()
		code, out, errs := cli(t, "vm", "list", "--json", "--socket", api)
		if code != 0 {
			t.Fatalf("vm list: %s", errs)
		}
		var list []daemon.VMStatus
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			t.Fatal(err)
		}
		m := map[string]daemon.VMStatus{}
		for _, v := range list {
			m[v.Name] = v
		}
		return m
	}
	names := func(m map[string]daemon.VMStatus) []string {
		var out []string
		for _, dm := range all {
			if _, ok := m[dm.name]; ok {
				out = append(out, dm.name)
			}
		}
		for n := range m {
			if !strings.HasPrefix(n, "xh-"+p) {
				out = append(out, n)
			}
		}
		return out
	}
	want := func(step string, doms ...dom) map[string]daemon.VMStatus {
		t.Helper()
		m := vms()
		var wantNames []string
		for _, dm := range doms {
			wantNames = append(wantNames, dm.name)
		}
		if got := names(m); fmt.Sprint(got) != fmt.Sprint(wantNames) {
			t.Errorf("after %s: the daemon has VMs %v, want %v", step, got, wantNames)
		}
		return m
	}
	startDom := func(dm dom) {
		t.Helper()
		t0 := time.Now()
		if out, err := vsh("start", dm.name); err != nil {
			t.Fatalf("virsh start %s: %v\n%s\nhook log: %s", dm.name, err, out, hookLog(dm.name))
		}
		t.Logf("virsh start %s: %v", dm.name, time.Since(t0).Round(time.Millisecond))
	}
	destroyDom := func(dm dom) {
		t.Helper()
		if out, err := vsh("destroy", dm.name); err != nil {
			t.Fatalf("virsh destroy %s: %v\n%s", dm.name, err, out)
		}
	}
	clashVM := clash.name
	if code, _, errs := cli(t, "vm", "add", "--socket", api, "--uplink", topo.Uplink, "--name", clashVM, "--mac", mac(7), "--tap", p+"x"); code != 0 {
		t.Fatalf("vm add %s: %s", clashVM, errs)
	}
	clashOnly := dom{name: clashVM}

	// vhost-user: QEMU, as libvirt-qemu, connects to the daemon's socket.
	startDom(vu)
	m := want("start "+vu.name, vu, clashOnly)
	// (libvirt relabels the agent channel's socket itself, to QEMU's
	// user and group: its group is libvirt-qemu then.)
	for _, sock := range []string{vsock, asock} {
		if fi, err := os.Stat(sock); err != nil {
			t.Errorf("VM socket: %v", err)
		} else if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != 0o660 || st.Uid != uidOf(t, daemon.DefaultQEMUUser) || sock == vsock && st.Gid != gidOf(t, daemon.DefaultQEMUGroup) {
			t.Errorf("VM socket %s: mode %v uid %d gid %d, want 0660 libvirt-qemu:kvm", sock, fi.Mode(), st.Uid, st.Gid)
		}
	}
	waitFor(t, "QEMU to connect to "+vsock, 20*time.Second, func() bool { return vms()[vu.name].FrontEndConnected })
	if v := m[vu.name]; v.Delivery != "vhost-user" || v.UUID == "" || v.AgentSocket != asock {
		t.Errorf("%s: %+v", vu.name, v)
	}

	// Taps: managed (libvirt makes it; started attaches it), unmanaged
	// (the daemon made it with QEMU's flags; libvirt opens it).
	startDom(managed)
	startDom(unmanaged)
	m = want("start of the tap domains", vu, managed, unmanaged, clashOnly)
	if v := m[managed.name]; v.Tap != p+"m" || v.TapWaiting || v.TapMode != "external" {
		t.Errorf("%s: tap %q waiting %v mode %q", managed.name, v.Tap, v.TapWaiting, v.TapMode)
	}
	if v := m[unmanaged.name]; v.Tap != p+"u" || v.TapMode != "qemu" {
		t.Errorf("%s: tap %q mode %q", unmanaged.name, v.Tap, v.TapMode)
	}

	// No metadata: the daemon never hears of the domain.
	startDom(plain)
	want("start "+plain.name, vu, managed, unmanaged, clashOnly)

	// A bad uplink: the start fails, saying which uplink, and leaves
	// nothing (no VM, no tap).
	if out, err := vsh("start", badUplink.name); err == nil || !strings.Contains(out, badUplink.uplink) {
		t.Errorf("virsh start %s (uplink %s): %v\n%s", badUplink.name, badUplink.uplink, err, out)
	}
	want("the failed start of "+badUplink.name, vu, managed, unmanaged, clashOnly)

	// Named like an unrelated VM: the start fails; the release that
	// follows leaves that VM alone.
	if out, err := vsh("start", clash.name); err == nil || !strings.Contains(out, "already exists") {
		t.Errorf("virsh start %s: %v\n%s", clash.name, err, out)
	}
	if v := want("the failed start of "+clash.name, vu, managed, unmanaged, clashOnly)[clashVM]; v.MAC != mac(7) {
		t.Errorf("VM %s was replaced: %+v", clashVM, v)
	}

	// A daemon that does not answer (stopped) costs the start a couple
	// of seconds, not 40: the hook's first request has 2 s.
	d.cmd.Process.Signal(syscall.SIGSTOP)
	t0 := time.Now()
	out, err := vsh("start", badUplink.name)
	hung := time.Since(t0)
	d.cmd.Process.Signal(syscall.SIGCONT)
	if err == nil || !strings.Contains(out, "did not answer within") || hung > 3*libvirthook.ProbeTimeout+2*time.Second {
		t.Errorf("virsh start %s against a stopped daemon: %v after %v\n%s", badUplink.name, err, hung, out)
	}
	t.Logf("virsh start against a stopped daemon failed after %v", hung.Round(time.Millisecond))
	want("the start against a stopped daemon", vu, managed, unmanaged, clashOnly)

	// A frame to each VM's MAC shows up in that VM's counters (and one to
	// the domain without metadata in none). (The taps' own TX counters
	// count what QEMU read, and a QEMU without a guest driver reads
	// little: not a measure here.)
	h, err := netlink.NewHandleAt(testnet.Runner(t, topo.HostNS).Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	sender := testnet.Sender(t, topo)
	deliver := func(step string) {
		t.Helper()
		const n = 50
		before := vms()
		for _, dm := range []dom{vu, managed, unmanaged, plain} {
			hw, _ := net.ParseMAC(dm.mac)
			spec := traffic.FrameSpec{Dst: hw, Src: topo.WireMAC, Size: 100, Tag: 7}
			if err := sender.Send(spec, dm.queue, 0, n); err != nil {
				t.Fatal(err)
			}
		}
		var after map[string]daemon.VMStatus
		got := func(dm dom) uint64 {
			return after[dm.name].Verdicts.Pass.Packets - before[dm.name].Verdicts.Pass.Packets
		}
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			after = vms()
			if got(vu) >= n && got(managed) >= n && got(unmanaged) >= n || time.Now().After(deadline) {
				break
			}
		}
		var total uint64
		for _, dm := range []dom{vu, managed, unmanaged} {
			if got(dm) != n {
				t.Errorf("%s: VM %s counted %d of the %d frames to its MAC", step, dm.name, got(dm), n)
			}
			total += got(dm)
		}
		if total != 3*n {
			t.Errorf("%s: VMs counted %d frames, want %d (none of the domain without metadata's)", step, total, 3*n)
		}
	}
	deliver("first start")

	// A managed tap libvirt names itself (no <target dev>): the VM waits
	// for it at prepare and gets libvirt's vnetN at started.
	startDom(auto)
	if v := vms()[auto.name]; !strings.HasPrefix(v.Tap, "vnet") || v.TapWaiting {
		t.Errorf("%s: tap %q waiting %v, want libvirt's vnetN", auto.name, v.Tap, v.TapWaiting)
	}
	before := vms()[auto.name].Verdicts.Pass.Packets
	hw, _ := net.ParseMAC(auto.mac)
	if err := sender.Send(traffic.FrameSpec{Dst: hw, Src: topo.WireMAC, Size: 100, Tag: 8}, 0, 0, 20); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "20 frames counted by "+auto.name, 10*time.Second, func() bool { return vms()[auto.name].Verdicts.Pass.Packets-before >= 20 })
	destroyDom(auto)
	if _, ok := vms()[auto.name]; ok {
		t.Errorf("VM %s left after destroy", auto.name)
	}

	// The daemon restarts: QEMU reconnects (the interface's <reconnect>).
	if err := d.stop(t); err != nil {
		t.Errorf("daemon stop: %v\n%s", err, d.stderr.String())
	}
	d = runDaemonFixed(t, cfgPath, api)
	want("the daemon's restart", vu, managed, unmanaged, clashOnly)
	waitFor(t, "QEMU to reconnect to "+vsock, 20*time.Second, func() bool { return vms()[vu.name].FrontEndConnected })
	m = vms()
	if m[managed.name].Tap != p+"m" || m[unmanaged.name].Tap != p+"u" {
		t.Errorf("after the restart: taps %q and %q, want %q and %q", m[managed.name].Tap, m[unmanaged.name].Tap, p+"m", p+"u")
	}
	deliver("after the daemon's restart")

	// Release: destroy removes the domain's VM, found by its UUID even
	// though libvirt's release XML lacks the managed tap's name; the
	// domain starts again.
	destroyDom(managed)
	want("destroy "+managed.name, vu, unmanaged, clashOnly)
	startDom(managed)
	want("the second start of "+managed.name, vu, managed, unmanaged, clashOnly)
	for _, dm := range []dom{vu, managed, unmanaged, plain} {
		destroyDom(dm)
	}
	want("destroy of every domain", clashOnly)
	if _, err := os.Stat(vsock); err == nil {
		t.Errorf("vhost-user socket %s left", vsock)
	}
	for _, tap := range []string{p + "m", p + "u", p + "n", p + "b"} {
		if _, err := h.LinkByName(tap); err == nil {
			t.Errorf("tap %s left after the domains were destroyed", tap)
		}
	}
	t.Logf("libvirt test: %v", time.Since(start).Round(time.Millisecond))
}

// domainXML is a domain that boots no OS under TCG with 256 MiB of
// shared memfd memory in one NUMA cell (what vhost-user needs), ACPI on
// (PCI hot-plug), and one interface; with an uplink, its metadata marks the
// interface for xdp-hostd (queue: a dedicated queue, 0 for none). QEMU 7.2
// under TCG crashes in vhost-user's start with MSI-X: the override gives
// the vhost-user NIC vectors=0.
func domainXML(name, emulator, mac, uplink, iface string, queue int) string {
	md := ""
	if uplink != "" {
		q := ""
		if queue > 0 {
			q = fmt.Sprintf(` queues="%d"`, queue)
		}
		md = fmt.Sprintf(`
  <metadata>
    <xh:xdp-hostd xmlns:xh=%q>
      <xh:interface mac=%q uplink=%q%s/>
    </xh:xdp-hostd>
  </metadata>`, libvirthook.Namespace, mac, uplink, q)
	}
	override := ""
	if strings.Contains(iface, "vhostuser") {
		override = `
  <qemu:override>
    <qemu:device alias='ua-xh0'>
      <qemu:frontend><qemu:property name='vectors' type='unsigned' value='0'/></qemu:frontend>
    </qemu:device>
  </qemu:override>`
	}
	return fmt.Sprintf(`<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>%s</name>%s
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <cpu><numa><cell id='0' cpus='0' memory='256' unit='MiB' memAccess='shared'/></numa></cpu>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <devices>
    <emulator>%s</emulator>
    %s
  </devices>%s
</domain>
`, name, md, emulator, iface, override)
}

// runDaemonFixed runs the daemon with a fixed configuration and socket (the
// hook has the socket on its command line), stopped when the test ends.
func runDaemonFixed(t *testing.T, cfgPath, socket string) *daemonProc {
	t.Helper()
	p := &daemonProc{socket: socket, stderr: &syncBuffer{}}
	p.cmd = exec.Command(binary, "run", "--config", cfgPath, "--socket", socket)
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.stop(t)
		}
	})
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(p.stderr.String(), "msg=ready"); {
		if time.Now().After(deadline) || p.cmd.ProcessState != nil {
			t.Fatalf("daemon not ready:\n%s", p.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p
}

// lockLibvirt keeps two runs of the libvirt test (two checkouts' make
// test) from sharing libvirtd and its hook: the second waits (2 min at
// most).
func lockLibvirt(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile("/run/lock/xdp-hostd-libvirt-test.lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(time.Second) {
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("another libvirt test holds /run/lock/xdp-hostd-libvirt-test.lock for 2 minutes")
		}
	}
}

// installHook puts the hook in /etc/libvirt/hooks/qemu, where libvirtd
// looks for it at start, and puts back what was there when the test ends.
func installHook(t *testing.T, script string) {
	t.Helper()
	const path = "/etc/libvirt/hooks/qemu"
	backup := path + ".xdp-hostd-test-backup"
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	had := false
	if _, err := os.Lstat(path); err == nil {
		if err := os.Rename(path, backup); err != nil {
			t.Fatal(err)
		}
		had = true
	}
	t.Cleanup(func() {
		os.Remove(path)
		if had {
			if err := os.Rename(backup, path); err != nil {
				t.Errorf("put back %s: %v", path, err)
			}
		}
	})
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
}

// startDaemonized runs a program that daemonizes (-d) and writes its PID
// to pidFile, and kills that PID when the test ends.
func startDaemonized(t *testing.T, what, pidFile string, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", what, err, out)
	}
	var pid int
	for deadline := time.Now().Add(10 * time.Second); pid == 0; time.Sleep(50 * time.Millisecond) {
		b, _ := os.ReadFile(pidFile)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		if pid == 0 && time.Now().After(deadline) {
			t.Fatalf("%s wrote no PID to %s", what, pidFile)
		}
	}
	t.Cleanup(func() {
		syscall.Kill(pid, syscall.SIGTERM)
		for deadline := time.Now().Add(10 * time.Second); syscall.Kill(pid, 0) == nil; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				syscall.Kill(pid, syscall.SIGKILL)
				break
			}
		}
	})
}

// live reports whether something listens on the unix socket at path.
func live(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func waitFor(t *testing.T, what string, limit time.Duration, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(limit); !ok(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
	}
}

func uidOf(t *testing.T, name string) uint32 {
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(u.Uid)
	return uint32(n)
}

func gidOf(t *testing.T, name string) uint32 {
	g, err := user.LookupGroup(name)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(g.Gid)
	return uint32(n)
}

// hookLog is the end of QEMU's log of the domain (libvirt's errors and QEMU's), for
// a failed start.
func hookLog(name string) string {
	b, err := os.ReadFile("/var/log/libvirt/qemu/" + name + ".log")
	if err != nil {
		return err.Error()
	}
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// The README's hook file is the one the libvirt test installs and `hook
// -h` prints.
func TestReadmeHookScript(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(hookScript("/usr/local/bin/xdp-hostd", daemon.DefaultSocket), "\n") {
		if l != "" {
			lines = append(lines, "   "+l)
		}
	}
	if block := strings.Join(lines, "\n"); !strings.Contains(string(b), block) {
		t.Errorf("README.md lacks the hook file:\n%s", block)
	}
	code, _, errs := runCmd("hook", "-h")
	if code != 0 || !strings.Contains(errs, strings.TrimSpace(hookScript("/usr/local/bin/xdp-hostd", daemon.DefaultSocket))) {
		t.Errorf("hook -h: exit %d\n%s", code, errs)
	}
}

// vm show and list point out a vhost-user VM without a front-end for long
// (and how QEMU reconnects), and a tap VM still waiting for its tap.
func TestPrintVMsNoFrontEnd(t *testing.T) {
	var b bytes.Buffer
	printVMs(&b, false, []daemon.VMStatus{
		{Name: "vu1", Delivery: "vhost-user", VhostUserSocket: "/run/x/vu1.sock", NoFrontEndSeconds: 125},
		{Name: "vu2", Delivery: "vhost-user", NoFrontEndSeconds: 3},
		{Name: "vu3", Delivery: "vhost-user", FrontEndConnected: true},
		{Name: "tm", Delivery: "tap", TapMode: "external", TapWaiting: true},
	})
	out := b.String()
	for _, want := range []string{"no front-end for 2m5s", "VM vu1: no front-end for 2m5s on /run/x/vu1.sock", "<reconnect enabled='yes'", "waiting for tap", "VM tm: waiting for its tap"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "VM vu2:") || strings.Contains(out, "VM vu3:") {
		t.Errorf("a VM with a front-end (or briefly without) pointed out:\n%s", out)
	}
}

// A QEMU without ACPI (what libvirt runs for a domain without
// <features><acpi/>) has no PCI hot-plug on the pc machine: vm attach
// fails saying to add <acpi/>.
func TestVMAttachNoACPI(t *testing.T) {
	testnet.RequireRoot(t)
	topo := testnet.Topology(t, 4)
	vsock := filepath.Join(t.TempDir(), "noacpi.sock")
	s, _ := startDaemon(t, fmt.Sprintf(`{"vm_socket_dirs": [%q], "uplinks": [{"name": %q, "netns": %q, "vms": [
		{"name": "noacpi", "mac": "52:54:00:00:ac:01", "queues": [1], "delivery": "vhost-user", "vhost_user_socket": %q}]}]}`,
		filepath.Dir(vsock), topo.Uplink, topo.HostNS, vsock))
	q := startQEMU(t, qemuOpts{extra: []string{"-no-acpi"}})
	code, out, errs := cli(t, "vm", "attach", s, "--qmp", q, "noacpi")
	if code != 1 || !strings.Contains(errs, "does not support hotplugging") || !strings.Contains(errs, "<features><acpi/></features>") {
		t.Errorf("attach without ACPI: exit %d\n%s%s", code, out, errs)
	}
}
