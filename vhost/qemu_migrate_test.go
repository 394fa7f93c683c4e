package vhost

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/qmp"
)

// TestIntegrationQEMUMigrationNotBlocked: a real QEMU (7.2, TCG, no guest
// OS) with a virtio-net NIC on this back-end can be migrated. QEMU blocks
// migration when a vhost back-end lacks VHOST_F_LOG_ALL: on the old code
// the QMP migrate command failed with "Migration disabled: vhost lacks
// VHOST_F_LOG_ALL feature.". The migration goes to a pipe (exec:cat), which
// is all QEMU needs to run it to completion.
func TestIntegrationQEMUMigrationNotBlocked(t *testing.T) {
	if testing.Short() {
		t.Skip("starts QEMU: skipped in -short mode")
	}
	qemu := testnet.RequireTool(t, "qemu-system-x86_64", "apt-get install qemu-system-x86")
	ts := startServer(t, NetConfig{})
	dir := t.TempDir()
	qmpPath := filepath.Join(dir, "qmp.sock")
	out := &testnet.SyncBuffer{}
	cmd := exec.Command(qemu, "-nodefaults", "-no-user-config", "-display", "none", "-machine", "pc", "-accel", "tcg", "-m", "64", "-S",
		"-object", "memory-backend-memfd,id=mem,size=64M,share=on", "-numa", "node,memdev=mem",
		"-chardev", "socket,id=vu0,path="+ts.path,
		"-netdev", "vhost-user,id=n0,chardev=vu0",
		"-device", "virtio-net-pci,netdev=n0,vectors=0,mac=52:54:00:00:d1:01",
		"-qmp", "unix:"+qmpPath+",server=on,wait=off")
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("QEMU output:\n%s", out.String())
		}
	})
	var c *qmp.Client
	for deadline := time.Now().Add(20 * time.Second); c == nil; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(qmpPath); err == nil {
			cl, err := qmp.Dial(qmpPath, 10*time.Second)
			if err == nil {
				c = cl
				break
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("QMP: %v", err)
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("QEMU made no QMP socket")
		}
	}
	defer c.Close()
	ctx := context.Background()
	waitFor(t, "QEMU connected", ts.srv.Connected)
	if err := c.Run(ctx, "migrate", map[string]any{"uri": "exec:cat > /dev/null"}, nil); err != nil {
		t.Fatalf("QMP migrate refused (QEMU blocks migration when the vhost-user back-end cannot log dirty pages): %v", err)
	}
	var st struct {
		Status    string `json:"status"`
		ErrorDesc string `json:"error-desc"`
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if err := c.Run(ctx, "query-migrate", nil, &st); err != nil {
			t.Fatal(err)
		}
		if st.Status == "completed" {
			break
		}
		if st.Status == "failed" || st.Status == "cancelled" {
			t.Fatalf("migration %s: %s", st.Status, st.ErrorDesc)
		}
		if time.Now().After(deadline) {
			t.Fatalf("migration still %q after 60 s", st.Status)
		}
	}
	if !ts.srv.Connected() {
		t.Error("the back-end lost QEMU during the migration")
	}
}
