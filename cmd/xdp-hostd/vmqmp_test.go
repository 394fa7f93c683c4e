package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	s, _ := startDaemon(t, fmt.Sprintf(`{"uplinks": [{"name": %q, "netns": %q, "vms": [
		{"name": "qmpvu", "mac": "52:54:00:00:ee:01", "queues": [1, 2], "delivery": "vhost-user", "vhost_user_socket": %q},
		{"name": "qmptap", "mac": "52:54:00:00:ee:02", "queues": [3]}]}]}`, topo.Uplink, topo.HostNS, vsock))
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
	start := time.Now()
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
