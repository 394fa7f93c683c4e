package qmp

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/internal/testenv"
	"github.com/xdp-hostd/xdp-hostd/vmtests"
	"github.com/xdp-hostd/xdp-hostd/vmtests/vmproto"
)

// TestHotplugWithGuest boots the vmtests guest (a Debian kernel, which has
// ACPI PCI hotplug) with a QMP monitor, hot-plugs a vhost-user NIC, checks
// the guest sees it, and detaches it: here device_del is acknowledged with
// DEVICE_DELETED and netdev and chardev are removed.
func TestHotplugWithGuest(t *testing.T) {
	testenv.RequireRoot(t, "vhost-user backend, shared guest memory")
	dir := t.TempDir()
	qmpPath := filepath.Join(dir, "qmp.sock")
	vm := vmtests.StartT(t, vmtests.WithQEMUArgs("-qmp", "unix:"+qmpPath+",server=on,wait=off"))
	c, err := Dial(qmpPath, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if st, err := c.Status(ctxT(t, 5*time.Second)); err != nil || st != "running" {
		t.Fatalf("status %q, %v", st, err)
	}
	tv := &testVM{qmpPath: qmpPath, dir: dir}
	sock := startBackend(t, tv, "vu0", 1)
	mac := mustMAC("52:54:00:ab:cd:42")
	if err := c.AttachVhostUser(ctxT(t, 30*time.Second), AttachOptions{ID: "hot0", Socket: sock, MAC: mac}); err != nil {
		t.Fatal(err)
	}
	if err := c.CheckMAC(ctxT(t, 5*time.Second), mac); err != nil {
		t.Fatal(err)
	}
	// The guest's virtio-net driver picks the NIC up.
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := vmtests.Call[vmproto.ExecResult](vm, vmproto.Exec{Argv: []string{"cat", "/sys/class/net/eth0/address"}})
		if err == nil && strings.TrimSpace(res.Output) == mac.String() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest did not show eth0 with %s: %+v, %v", mac, res, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err := c.DetachVhostUser(ctxT(t, 60*time.Second), "hot0"); err != nil {
		t.Fatal(err)
	}
	if n, err := c.NICs(ctxT(t, 5*time.Second)); err != nil || len(n) != 0 {
		t.Fatalf("after detach: NICs %v, %v", n, err)
	}
	if contains(chardevs(t, c), "hot0-chr") || strings.Contains(netdevs(t, c), "hot0-net") {
		t.Fatal("chardev or netdev left after detach")
	}
	// Detach again: everything is gone already, and that is not an error.
	if err := c.DetachVhostUser(ctxT(t, 10*time.Second), "hot0"); err != nil {
		t.Fatalf("second detach: %v", err)
	}
}
