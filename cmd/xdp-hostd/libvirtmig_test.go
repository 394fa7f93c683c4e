package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/libvirthook"
)

// libvirtHost is a migHost with the hook file libvirt would run there
// (/etc/libvirt/hooks/qemu: hookScript with the other hosts as peers).
type libvirtHost struct {
	*migHost
	hook string
}

func newLibvirtHost(t *testing.T, h *migHost, extra ...string) *libvirtHost {
	t.Helper()
	script := hookScript(binary, h.socket)
	if len(extra) > 0 {
		script = strings.Replace(script, " qemu \"$@\"", " "+strings.Join(extra, " ")+" qemu \"$@\"", 1)
	}
	p := filepath.Join(t.TempDir(), "qemu")
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return &libvirtHost{migHost: h, hook: p}
}

// call runs the hook as libvirt does: argv DOMAIN OP SUBOP EXTRA, the
// domain XML on stdin, an environment of LC_ALL, PATH and HOME only; at
// most 30 s (the hook's own bound is 25 s).
func (h *libvirtHost) call(domain, op, subop, xml string) (code int, stdout, stderr string) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.hook, domain, op, subop, "-")
	cmd.Env = []string{"LC_ALL=C", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"}
	cmd.Stdin = strings.NewReader(xml)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		h.t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

// ok runs the hook and fails the test unless it exits 0 with nothing on
// stdout (for "migrate": the XML unchanged).
func (h *libvirtHost) ok(domain, op, subop, xml string) string {
	h.t.Helper()
	code, out, errs := h.call(domain, op, subop, xml)
	if code != 0 || out != "" {
		h.t.Fatalf("%s: hook %s %s: exit %d, stdout %q\n%s", h.name, op, subop, code, out, errs)
	}
	return errs
}

// noVM fails the test if the host's daemon has VM name.
func (h *libvirtHost) noVM(name, when string) {
	h.t.Helper()
	if code, out, _ := cli(h.t, "vm", "show", "--socket", h.socket, name); code == 0 {
		h.t.Errorf("%s: %s: the daemon has VM %s:\n%s", h.name, when, name, out)
	}
}

// migDomainXML is a domain whose managed tap interface (the tap libvirt
// made, here the test's) the metadata marks for xdp-hostd on uplink.
func migDomainXML(name, uuid, mac, uplink, tap string) string {
	return fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <uuid>%s</uuid>
  <metadata>
    <xh:xdp-hostd xmlns:xh=%q>
      <xh:interface mac=%q uplink=%q/>
    </xh:xdp-hostd>
  </metadata>
  <memory unit='MiB'>256</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <interface type='ethernet'>
      <mac address=%q/>
      <target dev=%q/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>`, name, uuid, libvirthook.Namespace, mac, uplink, mac, tap)
}

// The libvirt hook's migration operations, run as libvirt runs them on the
// two hosts of a `virsh migrate --live` (same argv, XML on stdin, only
// LC_ALL/PATH/HOME), each against its host's real daemon (own uplink in
// own namespaces), the peers' daemons given with --peer:
//   - a destination whose policy refuses the program fails "migrate begin"
//     (libvirt cancels the migration) and keeps nothing; the source runs on;
//   - a migration that fails after the destination's prepare/start/started
//     ("stopped"/"release" there) leaves nothing there, the source running
//     its program, counting on;
//   - a migration that completes: the destination has the VM closed from
//     "migrate begin" on (frames dropped), the source's "stopped end" moves
//     program and maps (the counts made during the migration too), the
//     source no longer has the VM, and frames flow on the destination with
//     the counts going on.
func TestLibvirtHookMigration(t *testing.T) {
	testnet.RequireRoot(t)
	start := time.Now()
	a := newMigHost(t, "a", "", "qemuw")
	b := newMigHost(t, "b", "", "qemuw")
	c := newMigHost(t, "c", `"max_cost_instructions": 5, `, "qemuw")
	// Each host's hook has the others as peers; b and c name their
	// uplink otherwise than the domain's metadata (a's name).
	ha := newLibvirtHost(t, a, "--peer", b.socket, "--peer", c.socket)
	hb := newLibvirtHost(t, b, "--peer", a.socket, "--peer", c.socket, "--uplink-map", a.topo.Uplink+"="+b.topo.Uplink)
	hc := newLibvirtHost(t, c, "--peer", a.socket, "--peer", b.socket, "--uplink-map="+a.topo.Uplink+"="+c.topo.Uplink)

	var u [16]byte
	rand.Read(u[:])
	uuid := fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
	const dom = "web"
	xml := migDomainXML(dom, uuid, macCounter, a.topo.Uplink, "qemuw")

	// The domain starts on a: the hook registers it; the counter program
	// counts 11 frames.
	for _, op := range []string{"prepare", "start", "started"} {
		ha.ok(dom, op, "begin", xml)
	}
	a.cli("prog", "load", "--vm", dom, writeObject(t, false, "counter"))
	progID := a.vm(dom).Program
	a.send(macCounter, allowedAddr, 1, 11)
	if got := a.delivered("qemuw", 1, 11); got != 11 {
		t.Fatalf("a: the VM got %d of 11 frames", got)
	}

	// To c: its policy refuses the program at "migrate begin".
	code, out, errs := hc.call(dom, "migrate", "begin", xml)
	t.Logf("c refuses: exit %d: %s", code, errs)
	if code == 0 || out != "" || !strings.Contains(errs, "cost") || !strings.Contains(errs, "cancelled") {
		t.Errorf("c's migrate begin: exit %d, stdout %q, want a refusal naming the cost rule:\n%s", code, out, errs)
	}
	hc.noVM(dom, "after refusing the migration")
	hc.ok(dom, "release", "end", xml) // libvirt's cleanup there: nothing to do
	if vs := a.vm(dom); vs.Frozen || vs.Program != progID {
		t.Errorf("a after c refused: %+v", vs)
	}

	// To b, failing after QEMU started there: b keeps nothing.
	errs = hb.ok(dom, "migrate", "begin", xml)
	if !strings.Contains(errs, "incoming from "+a.socket) {
		t.Errorf("b's migrate begin says: %s", errs)
	}
	for _, op := range []string{"prepare", "start", "started"} {
		hb.ok(dom, op, "begin", xml)
	}
	if vs := b.vm(dom); !vs.Incoming || vs.Program != 0 || vs.UUID != uuid {
		t.Fatalf("b after migrate/prepare/start/started: %+v", vs)
	}
	b.send(macCounter, allowedAddr, 2, 4)
	if v := b.seen(dom, 4); v != 4 || b.taps["qemuw"].Snapshot().ByTag[2] != 0 {
		t.Errorf("b: the incoming VM saw %d of 4 frames and delivered %d (want 0)", v, b.taps["qemuw"].Snapshot().ByTag[2])
	}
	hb.ok(dom, "stopped", "end", xml)
	hb.ok(dom, "release", "end", xml)
	hb.noVM(dom, "after the migration failed")
	if vs := a.vm(dom); vs.Frozen || vs.Program != progID {
		t.Errorf("a after the failed migration: %+v", vs)
	}
	a.send(macCounter, allowedAddr, 3, 2)
	if got := a.delivered("qemuw", 3, 2); got != 2 {
		t.Errorf("a: after the failed migration the VM got %d of 2 frames", got)
	}

	// To b, completing: 5 frames counted on a during the migration.
	hb.ok(dom, "migrate", "begin", xml)
	for _, op := range []string{"prepare", "start", "started"} {
		hb.ok(dom, op, "begin", xml)
	}
	a.send(macCounter, allowedAddr, 4, 5)
	if got := a.delivered("qemuw", 4, 5); got != 5 {
		t.Errorf("a: during the migration the VM got %d of 5 frames", got)
	}
	stop := time.Now()
	errs = ha.ok(dom, "stopped", "end", xml)
	t.Logf("source's stopped end (final export, import on b, removal on a): %v: %s", time.Since(stop).Round(time.Millisecond), strings.TrimSpace(errs))
	ha.ok(dom, "release", "end", xml)
	ha.noVM(dom, "after the migration")
	vs := b.vm(dom)
	if vs.Incoming || vs.Program == 0 || vs.Uplink != b.topo.Uplink {
		t.Fatalf("b after the migration: %+v", vs)
	}
	doc := b.export(dom)
	if n, s := mapU64(t, doc, "totals", zeroKey), mapU64(t, doc, ".bss", zeroKey); n != 18 || s != 18 {
		t.Errorf("b: counter totals %d, seen %d right after the migration; want a's 11+2+5", n, s)
	}
	if doc.Program == nil || len(doc.Program.History) != 1 || doc.Program.History[0].ID != progID {
		t.Errorf("b's export: program history %+v, want a's ID %d", doc.Program, progID)
	}
	b.send(macCounter, allowedAddr, 5, 9)
	if got := b.delivered("qemuw", 5, 9); got != 9 {
		t.Errorf("b: after the migration the VM got %d of 9 frames", got)
	}
	b.seen(dom, 4+9)
	if n := mapU64(t, b.export(dom), "totals", zeroKey); n != 27 {
		t.Errorf("b: counter totals %d, want 18 from a + 9", n)
	}
	// The domain stops on b later: release removes it there.
	hb.ok(dom, "stopped", "end", xml)
	if vs := b.vm(dom); vs.Program == 0 {
		t.Errorf("b: a plain stop moved or changed the VM: %+v", vs)
	}
	hb.ok(dom, "release", "end", xml)
	hb.noVM(dom, "after the domain's release")
	t.Logf("test: %v", time.Since(start).Round(time.Millisecond))
}

// The hook's flags: a malformed --uplink-map and an unknown flag are usage
// errors naming the accepted form; a domain of xdp-hostd's arriving by
// migration at a hook without --peer is refused (libvirt cancels the
// migration) with what to add, before any daemon is asked.
func TestHookMigrationFlags(t *testing.T) {
	xml := migDomainXML("web", "6f1c2d3e-0000-4000-8000-000000000001", macCounter, "eth1", "web-tap")
	for _, c := range []struct {
		args  []string
		code  int
		says  string
		stdin string
	}{
		{[]string{"hook", "--uplink-map", "eth1", "qemu", "web", "prepare", "begin", "-"}, 2, "METADATA_UPLINK=LOCAL_UPLINK", xml},
		{[]string{"hook", "--peers", "/x", "qemu", "web", "prepare", "begin", "-"}, 2, "unknown flag --peers", xml},
		{[]string{"hook", "--socket", "/nonexistent/api.sock", "qemu", "web", "migrate", "begin", "-"}, 1, "has no --peer", xml},
		// Not xdp-hostd's domain: nothing to do, no daemon asked.
		{[]string{"hook", "--socket", "/nonexistent/api.sock", "qemu", "other", "migrate", "begin", "-"}, 0, "", "<domain type='qemu'><name>other</name></domain>"},
	} {
		cmd := exec.Command(binary, c.args...)
		cmd.Stdin = strings.NewReader(c.stdin)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != c.code || !strings.Contains(errb.String(), c.says) || out.Len() != 0 {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit %d saying %q", c.args, code, out.String(), errb.String(), c.code, c.says)
		}
	}
}
