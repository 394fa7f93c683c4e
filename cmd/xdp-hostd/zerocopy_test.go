package main

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/testpmd"
	"github.com/xdp-hostd/xdp-hostd/traffic"
)

// A vhost-user VM configured with "delivery_mode": "zerocopy", testpmd as
// its front-end: every frame sent to its queue arrives; `vm show` reports
// the mode, whether zero-copy is on (or why it fell back to copy) and its
// counters; `caps --vm` lists zerocopy among the delivery modes.
func TestRunVhostUserZeroCopy(t *testing.T) {
	testnet.RequireRoot(t)
	testpmd.Require(t)
	topo := testnet.Topology(t, 4)
	dir := t.TempDir()
	vsock := filepath.Join(dir, "vm1.sock")
	cfg := fmt.Sprintf(`{"vm_socket_dirs": [%q], "uplinks": [{"name": %q, "netns": %q, "vms": [{"name": "vm1", "mac": "02:00:00:00:00:01", "queues": [2], "delivery": "vhost-user", "vhost_user_socket": %q, "delivery_mode": "zerocopy"}]}]}`,
		dir, topo.Uplink, topo.HostNS, vsock)
	d := runDaemonBinary(t, cfg)
	defer d.cmd.Process.Kill()
	s := "--socket=" + d.socket
	pmd, err := testpmd.Start(testpmd.Options{Vdevs: []string{"net_virtio_user0,path=" + vsock + ",queues=1,mac=02:00:00:00:00:01"}, Mode: "rxonly", Prefix: "xhclizc"})
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
	vs := vmShow(t, s, "vm1")
	if vs.ZeroCopy == nil || vs.ZeroCopy.Mode != "zerocopy" || len(vs.ZeroCopy.Active) != 1 {
		t.Fatalf("vm show: zero_copy %+v", vs.ZeroCopy)
	}
	active := vs.ZeroCopy.Active[0]
	t.Logf("zero-copy active %v, fallback %q", active, vs.ZeroCopy.Fallback)
	if !active && vs.ZeroCopy.Fallback == "" {
		t.Error("neither zero-copy nor a fallback reason")
	}
	for deadline := time.Now().Add(10 * time.Second); active && vmShow(t, s, "vm1").ZeroCopy.Stats.Posted == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("testpmd's RX buffers never reached the kernel")
		}
	}
	spec := traffic.FrameSpec{Dst: net.HardwareAddr{2, 0, 0, 0, 0, 1}, Src: topo.WireMAC, Size: 100, Tag: 1}
	sender := testnet.Sender(t, topo)
	for sent := 0; sent < 1000; sent += 100 {
		if err := sender.Send(spec, 2, uint32(sent), 100); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var rx uint64
	for deadline := time.Now().Add(15 * time.Second); rx < 1000 && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		rx, _ = pmd.Stats()
	}
	if rx != 1000 {
		t.Errorf("testpmd received %d of 1000 frames", rx)
	}
	vs = vmShow(t, s, "vm1")
	t.Logf("zero_copy %+v", vs.ZeroCopy)
	if active && vs.ZeroCopy.Stats.Delivered != 1000 {
		t.Errorf("zero-copy delivered %d of 1000", vs.ZeroCopy.Stats.Delivered)
	}
	if code, out, errs := cli(t, "vm", "show", s, "vm1"); code != 0 || !strings.Contains(out, "delivery mode zerocopy") {
		t.Errorf("vm show: exit %d\n%s%s", code, out, errs)
	}
	if code, out, errs := cli(t, "caps", "--vm", "vm1", s); code != 0 || !strings.Contains(out, `"zerocopy"`) {
		t.Errorf("caps --vm: exit %d\n%s%s", code, out, errs)
	}
	if err := d.stop(t); err != nil {
		t.Errorf("exit: %v\n%s", err, d.stderr.String())
	}
}
