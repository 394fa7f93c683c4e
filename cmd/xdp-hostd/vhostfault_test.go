package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/traffic"
	"github.com/xdp-hostd/xdp-hostd/vhost/vhosttest"
)

// A live daemon with two vhost-user VMs: vm1's front-end shrinks its guest
// memory under the daemon and kicks a frame that lies beyond the new end
// (issue 9, finding 9: the daemon used to die of SIGBUS in processTX and
// every VM lost its back-end). The daemon lives on; vm1's connection is
// closed and its TX queue counted broken in `vm show` and the metrics;
// vm2's traffic goes on, and vm1's next front-end is served.
func TestRunVhostUserMemoryFault(t *testing.T) {
	testnet.RequireRoot(t)
	topo := testnet.Topology(t, 4)
	dir := t.TempDir()
	mac1, mac2 := net.HardwareAddr{2, 0, 0, 0, 0x9f, 1}, net.HardwareAddr{2, 0, 0, 0, 0x9f, 2}
	sock1, sock2 := filepath.Join(dir, "vm1.sock"), filepath.Join(dir, "vm2.sock")
	cfg := fmt.Sprintf(`{"vm_socket_dirs": [%q], "uplinks": [{"name": %q, "netns": %q, "vms": [
		{"name": "vm1", "mac": %q, "queues": [2], "delivery": "vhost-user", "vhost_user_socket": %q},
		{"name": "vm2", "mac": %q, "queues": [3], "delivery": "vhost-user", "vhost_user_socket": %q}]}]}`,
		dir, topo.Uplink, topo.HostNS, mac1, sock1, mac2, sock2)
	metrics := freeLoopbackAddr(t)
	d := runDaemonBinary(t, cfg, "--metrics", metrics)
	defer d.cmd.Process.Kill()
	s := "--socket=" + d.socket

	fe2 := vhosttest.Dial(t, sock2, vhosttest.Options{})
	sender := testnet.Sender(t, topo)
	vm2Receives := func(what string, seq uint32) {
		t.Helper()
		fe2.PostRX(25)
		if err := sender.Send(traffic.FrameSpec{Dst: mac2, Src: topo.WireMAC, Size: 100, Tag: 2}, 3, seq, 20); err != nil {
			t.Fatal(err)
		}
		got := 0
		for deadline := time.Now().Add(10 * time.Second); got < 20 && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			for _, f := range fe2.Received() {
				if bytes.Equal(f[:6], mac2) {
					got++
				}
			}
		}
		if got != 20 {
			t.Errorf("%s: vm2 received %d of 20 frames", what, got)
		}
	}
	vm2Receives("before the fault", 0)

	fe1 := vhosttest.Dial(t, sock1, vhosttest.Options{})
	frame := make([]byte, 300)
	n, err := traffic.FrameSpec{Dst: topo.WireMAC, Src: mac1, Size: 300, Tag: 1}.Build(frame, 0)
	if err != nil {
		t.Fatal(err)
	}
	send := fe1.TransmitAcross(frame[:n], 64)
	if err := fe1.Shrink(1 << 20); err != nil {
		t.Fatal(err)
	}
	send()
	if err := fe1.WaitClosed(10 * time.Second); err != nil {
		t.Fatalf("%v\ndaemon log:\n%s", err, d.stderr.String())
	}
	// A dead child stays a zombie until waited for: look at its state.
	for deadline := time.Now().Add(200 * time.Millisecond); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", d.cmd.Process.Pid)); err != nil || strings.Contains(string(st), ") Z ") {
			t.Fatalf("the daemon died:\n%s", d.stderr.String())
		}
	}
	if !vmFrontEnd(t, s, "vm1", false) {
		t.Error("vm show: vm1's front-end still connected after the fault")
	}
	if !strings.Contains(d.stderr.String(), "guest memory fault") {
		t.Errorf("the fault was not logged:\n%s", d.stderr.String())
	}
	code, out, errs := cli(t, "vm", "show", s, "--json", "vm1")
	var vs []daemon.VMStatus
	if code != 0 || json.Unmarshal([]byte(out), &vs) != nil || len(vs) != 1 {
		t.Fatalf("vm show vm1: exit %d\n%s%s", code, out, errs)
	}
	if vs[0].VhostQueueBreaks != 1 {
		t.Errorf("vm show vm1: vhost_queue_breaks %d, want 1", vs[0].VhostQueueBreaks)
	}
	if code, out, _ := cli(t, "vm", "show", s, "vm1"); code != 0 || !strings.Contains(out, "no front-end, 1 queue breaks") {
		t.Errorf("vm show vm1 (table): exit %d\n%s", code, out)
	}
	body := scrape(t, metrics)
	for _, want := range []string{
		`xdp_hostd_vhost_queue_broken_total{dir="tx",uplink="` + topo.Uplink + `",virtqueue="1",vm="vm1"} 1`,
		`xdp_hostd_vhost_queue_broken_total{dir="tx",uplink="` + topo.Uplink + `",virtqueue="1",vm="vm2"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	vm2Receives("after vm1's fault", 100)

	// vm1's next front-end is served.
	vhosttest.Dial(t, sock1, vhosttest.Options{})
	if !vmFrontEnd(t, s, "vm1", true) {
		t.Error("vm1's next front-end is not connected")
	}
	if err := d.stop(t); err != nil {
		t.Errorf("exit: %v\n%s", err, d.stderr.String())
	}
}
