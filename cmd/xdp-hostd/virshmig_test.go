package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/libvirthook"
	"github.com/xdp-hostd/xdp-hostd/traffic"
)

// migLibvirt is a libvirtd of its own: its own /etc/libvirt (a copy of
// this host's, with its own host_uuid, QEMU as root without cgroups or
// security labels, logs to files, no networks), /run/libvirt,
// /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt, bind-mounted
// in a mount namespace of its own, in the network namespace netns; the hook
// is hook.
type migLibvirt struct {
	t    *testing.T
	root string
	uri  string
}

func randomUUID() string {
	var u [16]byte
	rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

func startMigLibvirt(t *testing.T, libvirtd, netns, hook string, binds map[string]string) *migLibvirt {
	t.Helper()
	root := t.TempDir()
	os.Chmod(root, 0o755)
	l := &migLibvirt{t: t, root: root}
	etc := filepath.Join(root, "etc")
	if out, err := exec.Command("cp", "-a", "/etc/libvirt", etc).CombinedOutput(); err != nil {
		t.Fatalf("copy /etc/libvirt: %v\n%s", err, out)
	}
	os.RemoveAll(filepath.Join(etc, "qemu"))
	os.MkdirAll(filepath.Join(etc, "qemu", "networks"), 0o755)
	os.RemoveAll(filepath.Join(etc, "hooks"))
	os.MkdirAll(filepath.Join(etc, "hooks"), 0o755)
	write := func(p, s string, mode os.FileMode) {
		if err := os.WriteFile(p, []byte(s), mode); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(etc, "libvirtd.conf"), fmt.Sprintf("host_uuid = %q\n", randomUUID()), 0o644)
	write(filepath.Join(etc, "qemu.conf"), `user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
stdio_handler = "file"
`, 0o644)
	write(filepath.Join(etc, "hooks", "qemu"), hook, 0o755)
	var mounts []string
	for dir, target := range map[string]string{"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt", "log": "/var/log/libvirt", "cache": "/var/cache/libvirt"} {
		src := filepath.Join(root, dir)
		os.MkdirAll(src, 0o755)
		os.MkdirAll(target, 0o755)
		mounts = append(mounts, fmt.Sprintf("mount --bind %s %s", src, target))
	}
	for src, target := range binds {
		mounts = append(mounts, fmt.Sprintf("mount --bind %s %s", src, target))
	}
	os.MkdirAll(filepath.Join(root, "log", "qemu"), 0o755)
	script := strings.Join(mounts, " && ") + " && exec nsenter --net=" + netns + " " + libvirtd + " -p " + filepath.Join(root, "libvirtd.pid")
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
	logf, err := os.Create(filepath.Join(root, "libvirtd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	t.Cleanup(func() {
		// A QEMU still running (its domain could not be destroyed) goes
		// with its libvirtd.
		pids, _ := filepath.Glob(filepath.Join(root, "run", "qemu", "*.pid"))
		for _, pf := range pids {
			b, _ := os.ReadFile(pf)
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil || pid <= 1 {
				continue
			}
			// Only that domain's QEMU (the PID may be another's by now).
			cl, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if bytes.Contains(cl, []byte("qemu-system")) && bytes.Contains(cl, []byte("guest="+strings.TrimSuffix(filepath.Base(pf), ".pid"))) {
				t.Logf("killing QEMU %d left by libvirtd %s", pid, root)
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(root, "libvirtd.log"))
			t.Logf("libvirtd %s log:\n%s", root, b)
		}
	})
	l.uri = "qemu+unix:///system?socket=" + filepath.Join(root, "run", "libvirt-sock")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if _, err := l.virsh("version"); err == nil {
			break
		}
		select {
		case <-done:
			b, _ := os.ReadFile(filepath.Join(root, "libvirtd.log"))
			t.Fatalf("libvirtd exited:\n%s", b)
		default:
		}
		if time.Now().After(deadline) {
			out, err := l.virsh("version")
			t.Fatalf("libvirtd does not answer: %v\n%s", err, out)
		}
	}
	return l
}

// virsh runs virsh against this libvirtd (at most 60 s).
func (l *migLibvirt) virsh(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "virsh", append([]string{"-c", l.uri}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func (l *migLibvirt) must(args ...string) string {
	l.t.Helper()
	out, err := l.virsh(args...)
	if err != nil {
		l.t.Fatalf("virsh %v: %v\n%s", args, err, out)
	}
	return out
}

// state is the domain's state ("" if the libvirtd has no such domain).
func (l *migLibvirt) state(dom string) string {
	out, err := l.virsh("domstate", dom)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

// startDomain creates a transient domain and destroys it when the test
// ends (on whichever libvirtd has it then).
func (l *migLibvirt) startDomain(xml string, name string, others ...*migLibvirt) {
	l.t.Helper()
	p := filepath.Join(l.root, name+".xml")
	os.WriteFile(p, []byte(xml), 0o644)
	l.must("create", p)
	l.t.Cleanup(func() {
		for _, x := range append([]*migLibvirt{l}, others...) {
			if x.state(name) != "" {
				x.virsh("destroy", name)
			}
		}
	})
}

// newNSMigHost is newMigHost with the daemon in a mount namespace of its
// own where sockDir is a directory of this host's (bind-mounted): the
// vhost-user socket paths in a domain's XML are the same on both hosts.
func newNSMigHost(t *testing.T, name, extraCfg, sockDir string) (*migHost, string, *syncBuffer) {
	t.Helper()
	h := &migHost{t: t, name: name, topo: testnet.Topology(t, 2), taps: map[string]*traffic.Counter{}}
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	own := filepath.Join(dir, "vms")
	os.MkdirAll(own, 0o755)
	os.MkdirAll(sockDir, 0o755)
	h.socket = filepath.Join(dir, "api.sock")
	cfg := filepath.Join(dir, "config.json")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`{%s"vm_socket_dirs": [%q], "uplinks": [{"name": %q, "netns": %q, "vms": []}]}`, extraCfg, sockDir, h.topo.Uplink, h.topo.HostNS)), 0o644)
	p := &daemonProc{socket: h.socket, stderr: &syncBuffer{}}
	p.cmd = exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		fmt.Sprintf("mount --bind %s %s && exec %s run --config %s --socket %s", own, sockDir, binary, cfg, h.socket))
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.stop(t); err != nil {
			t.Errorf("daemon %s exit: %v\n%s", name, err, p.stderr.String())
		}
	})
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(p.stderr.String(), "msg=ready"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("daemon %s not ready:\n%s", name, p.stderr.String())
		}
	}
	h.sender = testnet.Sender(t, h.topo)
	return h, own, p.stderr
}

// virshDomainXML is a domain that boots no OS under TCG, with a managed
// tap interface the metadata marks for xdp-hostd.
func virshDomainXML(name, uuid, mac, uplink, tap, emulator string) string {
	return fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <uuid>%s</uuid>
  <metadata>
    <xh:xdp-hostd xmlns:xh=%q>
      <xh:interface mac=%q uplink=%q/>
    </xh:xdp-hostd>
  </metadata>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <emulator>%s</emulator>
    <interface type='ethernet'>
      <mac address=%q/>
      <target dev=%q/>
      <model type='virtio'/>
    </interface>
    <memballoon model='none'/>
  </devices>
</domain>`, name, uuid, libvirthook.Namespace, mac, uplink, emulator, mac, tap)
}

// `virsh migrate --live` between two libvirtds on this machine (each in its
// own mount and network namespace, with its own host UUID, its own
// xdp-hostd on its own uplink, the hook with the other daemon as --peer;
// the QEMUs' migration stream over a veth between the two namespaces):
//   - a domain whose program the destination's policy refuses (cost 157
//     over its budget of 150): the migration fails with the hook's
//     message; the domain runs on at the source with its program, not
//     frozen; the destination has neither the domain nor the VM;
//   - a migration failing half-way (the destination's hooks ran and its
//     QEMU waits, then QEMU's stream cannot reach it): the destination
//     keeps neither domain nor VM, the source's domain runs on with its
//     program, unfrozen, counting;
//   - a domain with a managed tap and one with vhost-user (memfd shared
//     memory, a dedicated queue), each with the counter program: after
//     `virsh migrate --live` the domain runs on the destination, the
//     destination's daemon has the VM (not incoming; the vhost-user one
//     with its QEMU connected) with the program and the counts made at
//     the source, and counts on; the source's daemon no longer has it.
//
// The daemons run in mount namespaces of their own too, where the
// vhost-user socket directory the XML names is their host's.
func TestVirshMigrate(t *testing.T) {
	testnet.RequireRoot(t)
	testnet.RequireTool(t, "virsh", "make deps (Debian: libvirt-clients)")
	libvirtd := testnet.RequireTool(t, "libvirtd", "make deps (Debian: libvirt-daemon-system)")
	qemu := testnet.RequireTool(t, "qemu-system-x86_64", "make deps (Debian: qemu-system-x86)")
	testnet.RequireTool(t, "nsenter", "util-linux")
	testnet.RequireTool(t, "unshare", "util-linux")
	testnet.RequireTool(t, "ip", "iproute2")
	start := time.Now()
	// The domain's vhost-user socket path, the same on both hosts: each
	// host's daemon and libvirtd see their own directory there.
	var rnd [4]byte
	rand.Read(rnd[:])
	sockDir := fmt.Sprintf("/run/xdp-hostd-mig-%x", rnd)
	t.Cleanup(func() { os.Remove(sockDir) })
	a, ownA, aLog := newNSMigHost(t, "a", "", sockDir)
	b, ownB, bLog := newNSMigHost(t, "b", `"max_cost_instructions": 150, `, sockDir)
	// The two "hosts" reach each other (QEMU's migration stream).
	an, bn := filepath.Base(a.topo.HostNS), filepath.Base(b.topo.HostNS)
	va, vb := a.topo.Prefix+"mg", b.topo.Prefix+"mg"
	for _, c := range [][]string{
		{"ip", "-n", an, "link", "add", va, "type", "veth", "peer", "name", vb, "netns", bn},
		{"ip", "-n", an, "addr", "add", "10.77.0.1/24", "dev", va},
		{"ip", "-n", bn, "addr", "add", "10.77.0.2/24", "dev", vb},
		{"ip", "-n", an, "link", "set", va, "up"},
		{"ip", "-n", bn, "link", "set", vb, "up"},
		{"ip", "-n", an, "link", "set", "lo", "up"},
		{"ip", "-n", bn, "link", "set", "lo", "up"},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", c, err, out)
		}
	}
	la := startMigLibvirt(t, libvirtd, a.topo.HostNS, hookScript(binary, a.socket, b.socket), map[string]string{ownA: sockDir})
	lb := startMigLibvirt(t, libvirtd, b.topo.HostNS, strings.Replace(hookScript(binary, b.socket, a.socket), " qemu \"$@\"", " --uplink-map "+a.topo.Uplink+"="+b.topo.Uplink+" qemu \"$@\"", 1), map[string]string{ownB: sockDir})
	t.Logf("daemons and libvirtds up after %v", time.Since(start).Round(time.Millisecond))

	p := a.topo.Prefix
	mac := func(i int) string { return fmt.Sprintf("52:54:00:%s:%s:%02x", p[1:3], p[3:5], i) }
	okDom, badDom := "xhmig-"+p, "xhref-"+p
	okUUID := randomUUID()
	la.startDomain(virshDomainXML(okDom, okUUID, mac(1), a.topo.Uplink, p+"t1", qemu), okDom, lb)
	la.startDomain(virshDomainXML(badDom, randomUUID(), mac(2), a.topo.Uplink, p+"t2", qemu), badDom, lb)
	// A vhost-user domain (memfd shared memory, a dedicated queue): QEMU
	// connects to a's socket.
	vuDom := "xhvu-" + p
	vuSock := filepath.Join(sockDir, p+"-vu.sock")
	la.startDomain(domainXML(vuDom, qemu, mac(3), a.topo.Uplink, fmt.Sprintf(`<interface type='vhostuser'>
      <mac address='%s'/>
      <source type='unix' path='%s' mode='client'>
        <reconnect enabled='yes' timeout='1'/>
      </source>
      <model type='virtio'/>
      <alias name='ua-xh0'/>
    </interface>`, mac(3), vuSock), 1), vuDom, lb)
	vuUUID := strings.TrimSpace(la.must("domuuid", vuDom))
	frontEnd := func(h *migHost) bool {
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if h.vm(vuDom).FrontEndConnected {
				return true
			}
		}
		return false
	}
	if !frontEnd(a) {
		t.Fatalf("a: QEMU did not connect to %s: %+v", vuSock, a.vm(vuDom))
	}
	a.cli("prog", "load", "--vm", okDom, writeObject(t, false, "counter"))
	a.cli("prog", "load", "--vm", vuDom, writeObject(t, false, "counter"))
	a.cli("prog", "load", "--vm", badDom, writeObject(t, true, "bridge"))
	okProg, vuProg, badProg := a.vm(okDom).Program, a.vm(vuDom).Program, a.vm(badDom).Program
	a.send(mac(1), allowedAddr, 1, 7)
	if got := a.seen(okDom, 7); got != 7 {
		t.Fatalf("a: the counter saw %d of 7 frames", got)
	}
	sendQ := func(h *migHost, n int) {
		t.Helper()
		m, _ := net.ParseMAC(mac(3))
		spec := traffic.FrameSpec{Dst: m, Src: h.topo.WireMAC, SrcIP: netip.MustParseAddr(allowedAddr), DstIP: netip.MustParseAddr("10.9.9.9"), Size: 100, Tag: 9}
		if err := h.sender.Send(spec, 1, 0, n); err != nil {
			t.Fatal(err)
		}
	}
	sendQ(a, 4)
	if got := a.seen(vuDom, 4); got != 4 {
		t.Fatalf("a: the vhost-user VM's counter saw %d of 4 frames", got)
	}
	dest := lb.uri
	migrate := func(dom string) (string, error) {
		return la.virsh("migrate", "--live", dom, dest, "tcp://10.77.0.2")
	}

	// Refused by the destination's policy.
	out, err := migrate(badDom)
	t.Logf("refused migration: %v: %s", err, strings.TrimSpace(out))
	if err == nil || !strings.Contains(out, "cost") {
		t.Errorf("migrating %s: err %v, want the hook's refusal naming the cost rule:\n%s", badDom, err, out)
	}
	if st := la.state(badDom); st != "running" {
		t.Errorf("a: domain %s is %q after the refused migration", badDom, st)
	}
	if st := lb.state(badDom); st != "" {
		t.Errorf("b: domain %s is %q after the refused migration", badDom, st)
	}
	if vs := a.vm(badDom); vs.Frozen || vs.Incoming || vs.Program != badProg {
		t.Errorf("a after the refused migration: %+v", vs)
	}
	(&libvirtHost{migHost: b}).noVM(badDom, "after the refused migration")

	// Failing half-way: b's hooks ran (migrate, prepare, start, started:
	// the VM incoming there, QEMU waiting), then QEMU's stream cannot reach
	// b (an address nobody has): libvirt kills b's QEMU (b's stopped and
	// release) and resumes a's domain, which runs on with its program.
	mstart := time.Now()
	out, err = la.virsh("migrate", "--live", okDom, dest, "tcp://10.77.0.3")
	t.Logf("migration failing half-way (%v): %v: %s", time.Since(mstart).Round(time.Millisecond), err, strings.TrimSpace(out))
	if err == nil {
		t.Fatalf("migrating %s to an unreachable address succeeded", okDom)
	}
	if st := la.state(okDom); st != "running" {
		t.Errorf("a: domain %s is %q after the failed migration", okDom, st)
	}
	if st := lb.state(okDom); st != "" {
		t.Errorf("b: domain %s is %q after the failed migration", okDom, st)
	}
	(&libvirtHost{migHost: b}).noVM(okDom, "after the failed migration")
	if vs := a.vm(okDom); vs.Frozen || vs.Incoming || vs.Program != okProg {
		t.Errorf("a after the failed migration: %+v", vs)
	}
	a.send(mac(1), allowedAddr, 3, 2)
	if got := a.seen(okDom, 9); got != 9 {
		t.Errorf("a: after the failed migration the counter saw %d of 7+2 frames", got)
	}

	// Completed.
	mstart = time.Now()
	if out, err := migrate(okDom); err != nil {
		t.Fatalf("virsh migrate --live %s: %v\n%s", okDom, err, out)
	}
	t.Logf("virsh migrate --live: %v", time.Since(mstart).Round(time.Millisecond))
	if st := lb.state(okDom); st != "running" {
		t.Errorf("b: domain %s is %q after the migration", okDom, st)
	}
	if st := la.state(okDom); st != "" {
		t.Errorf("a: domain %s is %q after the migration", okDom, st)
	}
	(&libvirtHost{migHost: a}).noVM(okDom, "after the migration")
	vs := b.vm(okDom)
	if vs.Incoming || vs.Frozen || vs.Program == 0 || vs.UUID != okUUID || vs.Tap == "" {
		t.Fatalf("b after the migration: %+v", vs)
	}
	doc := b.export(okDom)
	if n := mapU64(t, doc, "totals", zeroKey); n != 9 {
		t.Errorf("b: counter totals %d after the migration, want a's 9", n)
	}
	if doc.Program == nil || len(doc.Program.History) != 1 || doc.Program.History[0].ID != okProg {
		t.Errorf("b's export: program history %+v, want a's ID %d", doc.Program, okProg)
	}
	b.send(mac(1), allowedAddr, 2, 5)
	b.seen(okDom, 5)
	if n := mapU64(t, b.export(okDom), "totals", zeroKey); n != 14 {
		t.Errorf("b: counter totals %d, want 9 from a + 5", n)
	}

	// The vhost-user domain: b's QEMU connects to b's socket (from
	// "migrate begin" on), the program and counts arrive, a keeps nothing.
	mstart = time.Now()
	if out, err := migrate(vuDom); err != nil {
		t.Fatalf("virsh migrate --live %s: %v\n%s", vuDom, err, out)
	}
	t.Logf("virsh migrate --live (vhost-user): %v", time.Since(mstart).Round(time.Millisecond))
	if st := lb.state(vuDom); st != "running" {
		t.Errorf("b: domain %s is %q after the migration", vuDom, st)
	}
	(&libvirtHost{migHost: a}).noVM(vuDom, "after the migration")
	vs = b.vm(vuDom)
	if vs.Incoming || vs.Frozen || vs.Program == 0 || vs.UUID != vuUUID || vs.VhostUserSocket != vuSock {
		t.Fatalf("b after the migration: %+v", vs)
	}
	if !frontEnd(b) {
		t.Errorf("b: QEMU is not connected to the VM's socket: %+v", b.vm(vuDom))
	}
	if log := bLog.String(); true {
		var rarp, final string
		for _, l := range strings.Split(log, "\n") {
			if strings.Contains(l, "SEND_RARP") && rarp == "" {
				rarp = l
			}
			if strings.Contains(l, "audit=vm_import") && strings.Contains(l, "vm="+vuDom) && strings.Contains(l, "final=true") {
				final = l
			}
		}
		var export string
		for _, l := range strings.Split(aLog.String(), "\n") {
			if strings.Contains(l, "audit=vm_export") && strings.Contains(l, "vm="+vuDom) && strings.Contains(l, "final=true") {
				export = l
			}
		}
		// From the guest's announcement on b (it runs there) to its
		// program there, b drops the VM's frames: libvirt's confirm
		// phase on a, then a's stopped hook.
		at := func(l string) time.Time {
			f, _, _ := strings.Cut(strings.TrimPrefix(l, "time="), " ")
			ts, _ := time.Parse(time.RFC3339Nano, f)
			return ts
		}
		if rarp != "" && export != "" && final != "" {
			t.Logf("b drops the VM's frames for %v after its QEMU announced the guest: %v until a's final export (libvirt's confirm phase on a, a's stopped hook), %v from there to b's final import",
				at(final).Sub(at(rarp)).Round(time.Millisecond), at(export).Sub(at(rarp)).Round(time.Millisecond), at(final).Sub(at(export)).Round(time.Millisecond))
		} else {
			t.Logf("b: the destination QEMU's announcement: %q\na: the final export: %q\nb: the final import: %q", rarp, export, final)
		}
	}
	doc = b.export(vuDom)
	if n := mapU64(t, doc, "totals", zeroKey); n != 4 {
		t.Errorf("b: the vhost-user VM's counter totals %d after the migration, want a's 4", n)
	}
	if doc.Program == nil || len(doc.Program.History) != 1 || doc.Program.History[0].ID != vuProg {
		t.Errorf("b's export: program history %+v, want a's ID %d", doc.Program, vuProg)
	}
	sendQ(b, 3)
	b.seen(vuDom, 3)
	if n := mapU64(t, b.export(vuDom), "totals", zeroKey); n != 7 {
		t.Errorf("b: the vhost-user VM's counter totals %d, want 4 from a + 3", n)
	}
	t.Logf("test: %v", time.Since(start).Round(time.Millisecond))
}

// The README's hook file for migration is hookScript with a peer.
func TestReadmeMigrationHookScript(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(hookScript("/usr/local/bin/xdp-hostd", daemon.DefaultSocket, "/run/xdp-hostd/peers/A.sock"), "\n")
	if !strings.Contains(string(b), "\n"+lines[2]+"\n") {
		t.Errorf("README.md lacks the hook line %q", lines[2])
	}
}
