package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/qmp"
)

// vm attach, check and detach against a QEMU with no guest OS (TCG, no
// disk, no kernel): needs no guest image, unlike TestVMAttachCheckDetach.
// The VM has two dedicated queues, so the NIC is plugged with two queue
// pairs (mq). Without a guest, PCI unplug is never acknowledged: detach
// fails within --timeout with the qmp package's explanation and leaves the
// NIC in place, and check still finds it.
func TestVMQMPWithoutGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("starts QEMU: skipped in -short mode")
	}
	testnet.RequireRoot(t)
	topo := testnet.Topology(t, 4)
	vsock := filepath.Join(t.TempDir(), "qmpvu.sock")
	s, _ := startDaemon(t, fmt.Sprintf(`{"vm_socket_dirs": [%q], "uplinks": [{"name": %q, "netns": %q, "vms": [
		{"name": "qmpvu", "mac": "52:54:00:00:ee:01", "queues": [1, 2], "delivery": "vhost-user", "vhost_user_socket": %q},
		{"name": "qmptap", "mac": "52:54:00:00:ee:02", "queues": [3]}]}]}`, filepath.Dir(vsock), topo.Uplink, topo.HostNS, vsock))
	q := startQEMUWithQMP(t, "") // skips in -short mode and without QEMU
	const mac = "52:54:00:00:ee:01"

	// Before attach: no NIC at all, and check says so naming the MAC.
	if code, _, errs := cli(t, "vm", "check", s, "--qmp", q, "qmpvu"); code != 1 || !strings.Contains(errs, mac) || !strings.Contains(errs, "no virtio-net NICs") {
		t.Errorf("check before attach: exit %d\n%s", code, errs)
	}

	code, out, errs := cli(t, "vm", "attach", s, "--qmp", q, "--id", "qmpnic7", "--json", "qmpvu")
	var rep QMPReport
	if err := json.Unmarshal([]byte(out), &rep); code != 0 || err != nil || !rep.MACMatches || rep.Device != "qmpnic7" ||
		len(rep.NICs) != 1 || !strings.Contains(rep.NICs[0], "qmpnic7") || !strings.Contains(rep.NICs[0], mac) {
		t.Fatalf("attach: exit %d, %v\n%s%s", code, err, out, errs)
	}
	code, out, errs = cli(t, "vm", "check", s, "--qmp", q, "--json", "qmpvu")
	rep = QMPReport{}
	if err := json.Unmarshal([]byte(out), &rep); code != 0 || err != nil || !rep.MACMatches || rep.MAC != mac || rep.Status != "running" || len(rep.NICs) != 1 {
		t.Fatalf("check after attach: exit %d, %v\n%s%s", code, err, out, errs)
	}

	// The NIC really is what the registration says: its netdev, MAC and
	// two queue pairs (one per dedicated queue). The CLI has closed its
	// QMP connection (QEMU serves one client at a time).
	c, err := qmp.Dial(q, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nics, err := c.NICs(ctx)
	if err != nil || len(nics) != 1 || nics[0].Netdev != "qmpnic7-net" || nics[0].MAC.String() != mac {
		t.Errorf("QEMU's NICs: %v, %v", nics, err)
	}
	var mq bool
	if err := c.Run(ctx, "qom-get", map[string]any{"path": "/machine/peripheral/qmpnic7", "property": "mq"}, &mq); err != nil || !mq {
		t.Errorf("NIC mq = %v, %v; want on (two queue pairs)", mq, err)
	}
	var info string
	if err := c.Run(ctx, "human-monitor-command", map[string]any{"command-line": "info network"}, &info); err != nil ||
		strings.Count(info, "qmpnic7-net") != 2 { // one line per queue pair
		t.Errorf("netdev qmpnic7-net should have two queue pairs: %v\n%s", err, info)
	}
	c.Close()

	// Attaching again is a no-op; under another id it is refused, naming
	// the NIC that has the MAC already.
	if code, out, errs := cli(t, "vm", "attach", s, "--qmp", q, "--id", "qmpnic7", "qmpvu"); code != 0 || !strings.Contains(errs, "already plugged") {
		t.Errorf("attach again: exit %d\n%s%s", code, out, errs)
	}
	if code, _, errs := cli(t, "vm", "attach", s, "--qmp", q, "--id", "qmpnic8", "qmpvu"); code != 1 || !strings.Contains(errs, "--id qmpnic7") {
		t.Errorf("attach under another id: exit %d\n%s", code, errs)
	}
	// The daemon reports the front-end, and a second QEMU is refused
	// rather than left frozen in netdev_add.
	if !vmFrontEnd(t, s, "qmpvu", true) {
		t.Error("vm show: front_end_connected is not true after attach")
	}
	q2 := startQEMUWithQMP(t, "52:54:00:00:ee:09")
	start := time.Now()
	if code, _, errs := cli(t, "vm", "attach", s, "--qmp", q2, "qmpvu"); code != 1 || !strings.Contains(errs, "already connected") {
		t.Errorf("attach to a second QEMU: exit %d\n%s", code, errs)
	}
	if code, out, errs := cli(t, "vm", "check", s, "--qmp", q2, "--timeout", "5s", "qmpvu"); code != 1 || !strings.Contains(errs, "other0") {
		t.Errorf("the second QEMU after the refused attach: exit %d\n%s%s", code, out, errs)
	}
	// Detach never unplugs a NIC that is not the VM's.
	if code, _, errs := cli(t, "vm", "detach", s, "--qmp", q2, "--id", "other0", "qmpvu"); code != 1 || !strings.Contains(errs, "not unplugging") {
		t.Errorf("detach another NIC: exit %d\n%s", code, errs)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("the refusals took %v", d)
	}

	// A tap VM has no vhost-user socket to attach.
	if code, _, errs := cli(t, "vm", "attach", s, "--qmp", q, "qmptap"); code != 1 || !strings.Contains(errs, "not vhost-user") || !strings.Contains(errs, "qemu-args qmptap") {
		t.Errorf("attach a tap VM: exit %d\n%s", code, errs)
	}
	// No QMP socket: how to start QEMU with one.
	missing := filepath.Join(t.TempDir(), "none.sock")
	for _, sub := range []string{"attach", "detach", "check"} {
		if code, _, errs := cli(t, "vm", sub, s, "--qmp", missing, "qmpvu"); code != 1 || !strings.Contains(errs, "-qmp unix:"+missing+",server=on,wait=off") {
			t.Errorf("%s without a QMP socket: exit %d\n%s", sub, code, errs)
		}
	}
	// Usage errors.
	if code, _, errs := cli(t, "vm", "attach", s, "qmpvu"); code != 2 || !strings.Contains(errs, "--qmp") {
		t.Errorf("attach without --qmp: exit %d\n%s", code, errs)
	}

	// No guest to release the device: a bounded, explained failure.
	start = time.Now()
	code, _, errs = cli(t, "vm", "detach", s, "--qmp", q, "--id", "qmpnic7", "--timeout", "3s", "qmpvu")
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("detach with --timeout 3s took %v", d)
	}
	if code != 1 || !strings.Contains(errs, "guest did not release the device") || !strings.Contains(errs, "detach again later") {
		t.Errorf("detach without a guest: exit %d\n%s", code, errs)
	}
	if code, out, errs := cli(t, "vm", "check", s, "--qmp", q, "qmpvu"); code != 0 || !strings.Contains(out, "qmpnic7") {
		t.Errorf("check after the refused unplug: exit %d\n%s%s", code, out, errs)
	}
}

// vmFrontEnd waits (bounded) until the daemon reports vm's vhost-user
// front-end as connected (want true) or gone (want false).
func vmFrontEnd(t *testing.T, socketFlag, vm string, want bool) bool {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		code, out, errs := cli(t, "vm", "show", socketFlag, "--json", vm)
		if code != 0 {
			t.Fatalf("vm show %s: exit %d\n%s", vm, code, errs)
		}
		var vs []daemon.VMStatus
		if err := json.Unmarshal([]byte(out), &vs); err != nil || len(vs) != 1 {
			t.Fatalf("vm show %s: %v\n%s", vm, err, out)
		}
		if vs[0].FrontEndConnected == want {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// vm attach on the machines libvirt makes: q35, whose root complex takes
// no hot-plug (the NIC goes to a free PCIe root port, skipping taken ones
// and ones with hotplug=off), a q35 without a free port (refused with the
// fix, nothing left in QEMU), --bus naming a port that refuses (rolled
// back), and private guest memory (refused: vhost-user needs share=on).
func TestVMAttachQ35AndMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("starts QEMU: skipped in -short mode")
	}
	testnet.RequireRoot(t)
	topo := testnet.Topology(t, 4)
	dir := t.TempDir()
	s, _ := startDaemon(t, fmt.Sprintf(`{"vm_socket_dirs": [%q], "uplinks": [{"name": %q, "netns": %q, "vms": [
		{"name": "q35a", "mac": "52:54:00:00:ef:01", "queues": [1], "delivery": "vhost-user", "vhost_user_socket": %q},
		{"name": "q35b", "mac": "52:54:00:00:ef:02", "queues": [2], "delivery": "vhost-user", "vhost_user_socket": %q}]}]}`,
		dir, topo.Uplink, topo.HostNS, filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock")))
	ports := []string{
		"-device", "pcie-root-port,id=rp1,chassis=1,slot=1,hotplug=off",
		"-device", "pcie-root-port,id=rp2,chassis=2,slot=2",
		"-device", "pcie-root-port,id=rp3,chassis=3,slot=3",
	}
	// other0 takes rp2, so rp3 is the first free port that takes hot-plug.
	qa := startQEMU(t, qemuOpts{machine: "q35", extra: append(ports, "-netdev", "user,id=o", "-device", "virtio-net-pci,netdev=o,id=other0,bus=rp2")})
	if code, out, errs := cli(t, "vm", "attach", s, "--qmp", qa, "q35a"); code != 0 || !strings.Contains(out, "xhnet0") {
		t.Fatalf("attach on q35: exit %d\n%s%s", code, out, errs)
	}
	if bus := pciParent(t, qa, "xhnet0"); bus != "rp3" {
		t.Errorf("NIC plugged behind %q, want rp3; other0 behind %q", bus, pciParent(t, qa, "other0"))
	}
	// The port taken by that hot-plug counts as taken: a second NIC finds
	// none left.
	code, _, errs := cli(t, "vm", "attach", s, "--qmp", qa, "--id", "xhnet1", "q35b")
	if code != 1 || !strings.Contains(errs, "all are taken: rp1 (hotplug=off), rp2, rp3") {
		t.Errorf("second attach on the q35 with no port left: exit %d\n%s", code, errs)
	}

	qb := startQEMU(t, qemuOpts{machine: "q35", extra: ports[:2]})
	code, _, errs = cli(t, "vm", "attach", s, "--qmp", qb, "q35b")
	if code != 1 || !strings.Contains(errs, "no free hot-pluggable PCIe root port") || !strings.Contains(errs, "rp1 (hotplug=off)") || !strings.Contains(errs, "pcie-root-port") {
		t.Errorf("attach on a q35 without a free port: exit %d\n%s", code, errs)
	}
	// --bus naming the port that refuses hot-plug: QEMU's error, and the
	// chardev and netdev added before are removed again.
	code, _, errs = cli(t, "vm", "attach", s, "--qmp", qb, "--bus", "rp1", "q35b")
	if code != 1 || !strings.Contains(errs, "does not support hotplugging") || strings.Contains(errs, "rollback failed") {
		t.Errorf("attach --bus rp1: exit %d\n%s", code, errs)
	}
	assertNoAttachLeft(t, qb)
	if !vmFrontEnd(t, s, "q35b", false) {
		t.Error("the rolled-back attach left a front-end connected")
	}

	qc := startQEMU(t, qemuOpts{private: true})
	code, _, errs = cli(t, "vm", "attach", s, "--qmp", qc, "q35b")
	if code != 1 || !strings.Contains(errs, "not shared") || !strings.Contains(errs, "pc.ram") || !strings.Contains(errs, "share=on") {
		t.Errorf("attach with private memory: exit %d\n%s", code, errs)
	}
	assertNoAttachLeft(t, qc)
}

// pciParent returns the id of the device whose bus the device id sits on
// ("" on the root bus), from its QOM parent_bus link.
func pciParent(t *testing.T, qmpPath, id string) string {
	t.Helper()
	c, err := qmp.Dial(qmpPath, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var bus string
	if err := c.Run(ctx, "qom-get", map[string]any{"path": "/machine/peripheral/" + id, "property": "parent_bus"}, &bus); err != nil {
		t.Fatal(err)
	}
	// /machine/peripheral/PORT/BUS for a bus behind a port with an id.
	if rest, ok := strings.CutPrefix(bus, "/machine/peripheral/"); ok {
		return strings.Split(rest, "/")[0]
	}
	return ""
}

// assertNoAttachLeft checks that QEMU holds no chardev, netdev or device
// of the default NIC id xhnet0.
func assertNoAttachLeft(t *testing.T, qmpPath string) {
	t.Helper()
	c, err := qmp.Dial(qmpPath, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var chardevs []struct {
		Label string `json:"label"`
	}
	if err := c.Run(ctx, "query-chardev", nil, &chardevs); err != nil {
		t.Fatal(err)
	}
	for _, ch := range chardevs {
		if strings.HasPrefix(ch.Label, "xhnet0") {
			t.Errorf("chardev %s left in QEMU", ch.Label)
		}
	}
	var info string
	if err := c.Run(ctx, "human-monitor-command", map[string]any{"command-line": "info network"}, &info); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(info, "xhnet0") {
		t.Errorf("netdev or NIC left in QEMU:\n%s", info)
	}
}
