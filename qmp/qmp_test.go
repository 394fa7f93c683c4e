package qmp

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/internal/testenv"
	"github.com/xdp-hostd/xdp-hostd/vhost"
)

// These tests start their own QEMU under TCG with no guest OS at all (no
// kernel, no disk: SeaBIOS finds nothing to boot and idles). That is enough
// for QMP status, NIC queries and hot-plugging, but such a VM never
// releases a PCI device on device_del, so DEVICE_DELETED never comes: the
// detach test checks the clean ErrUnplugTimeout error and that netdev and
// chardev stay; rollback is tested by making device_add fail.

type testVM struct {
	qmpPath string
	dir     string
}

// syncBuffer collects a child process's output while the test reads it.
type syncBuffer = testnet.SyncBuffer

func startQEMU(t *testing.T) *testVM {
	t.Helper()
	if testing.Short() {
		t.Skip("starts QEMU: skipped in -short mode")
	}
	qemu := testnet.RequireTool(t, "qemu-system-x86_64", "apt-get install qemu-system-x86")
	testenv.RequireRoot(t, "vhost-user backend sockets, shared guest memory")
	dir := t.TempDir()
	vm := &testVM{qmpPath: filepath.Join(dir, "qmp.sock"), dir: dir}
	args := []string{
		"-nodefaults", "-no-user-config", "-display", "none",
		"-machine", "pc", "-accel", "tcg", "-m", "256",
		"-object", "memory-backend-memfd,id=mem,size=256M,share=on",
		"-numa", "node,memdev=mem",
		"-qmp", "unix:" + vm.qmpPath + ",server=on,wait=off",
	}
	cmd := exec.Command(qemu, args...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting QEMU: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill() // by its pid
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			t.Errorf("QEMU (pid %d) did not exit after SIGKILL", cmd.Process.Pid)
		}
		if s := out.String(); s != "" {
			t.Logf("QEMU output:\n%s", s)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if fi, err := os.Stat(vm.qmpPath); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return vm
		}
		select {
		case err := <-exited:
			t.Fatalf("QEMU exited before its QMP socket appeared: %v\n%s", err, out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("QEMU's QMP socket %s did not appear within 10s\n%s", vm.qmpPath, out.String())
		}
	}
}

func dial(t *testing.T, vm *testVM) *Client {
	t.Helper()
	c, err := Dial(vm.qmpPath, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// startBackend serves a vhost-user net device on a socket in vm.dir.
func startBackend(t *testing.T, vm *testVM, name string, queues int) string {
	t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	dev, err := vhost.NewNetDevice(vhost.NetConfig{QueuePairs: queues, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(vm.dir, name+".sock")
	srv, err := vhost.NewServer(path, dev, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("vhost backend %s: %v", name, err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("vhost backend %s did not stop", name)
		}
	})
	return path
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// chardevs returns the labels of QEMU's chardevs.
func chardevs(t *testing.T, c *Client) []string {
	t.Helper()
	var list []struct {
		Label string `json:"label"`
	}
	if err := c.Run(ctxT(t, 5*time.Second), "query-chardev", nil, &list); err != nil {
		t.Fatal(err)
	}
	var labels []string
	for _, l := range list {
		labels = append(labels, l.Label)
	}
	return labels
}

// netdevs returns HMP's "info network" (QMP has no netdev query in 7.2).
func netdevs(t *testing.T, c *Client) string {
	t.Helper()
	var out string
	if err := c.Run(ctxT(t, 5*time.Second), "human-monitor-command",
		map[string]any{"command-line": "info network"}, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

func TestStatus(t *testing.T) {
	vm := startQEMU(t)
	c := dial(t, vm)
	st, err := c.Status(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if st != "running" {
		t.Fatalf("status %q, want running", st)
	}
	if err := c.Run(ctxT(t, 5*time.Second), "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Status(ctxT(t, 5*time.Second)); err != nil || st != "paused" {
		t.Fatalf("after stop: status %q, %v; want paused", st, err)
	}
}

func TestBadCommands(t *testing.T) {
	vm := startQEMU(t)
	c := dial(t, vm)
	ctx := ctxT(t, 10*time.Second)

	err := c.Run(ctx, "no-such-command", nil, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" || qe.Command != "no-such-command" {
		t.Fatalf("unknown command: got %v, want *Error CommandNotFound", err)
	}
	t.Log(err)

	err = c.Run(ctx, "query-status", map[string]any{"bogus": 1}, nil)
	if !errors.As(err, &qe) || qe.Class != "GenericError" || !strings.Contains(qe.Desc, "bogus") {
		t.Fatalf("bad argument: got %v, want *Error GenericError naming the argument", err)
	}
	t.Log(err)

	err = c.Run(ctx, "device_del", map[string]any{"id": "nope"}, nil)
	if !errors.As(err, &qe) || qe.Class != "DeviceNotFound" {
		t.Fatalf("device_del of a missing device: got %v, want DeviceNotFound", err)
	}

	// Arguments that are not a JSON object: QEMU refuses them, cleanly.
	err = c.Run(ctx, "query-status", []int{1, 2}, nil)
	if !errors.As(err, &qe) {
		t.Fatalf("non-object arguments: got %v, want *Error", err)
	}
	t.Log(err)

	// Unencodable arguments never reach QEMU.
	if err := c.Run(ctx, "query-status", map[string]any{"x": make(chan int)}, nil); err == nil {
		t.Fatal("unencodable arguments: no error")
	}

	// The connection survives all of that.
	if st, err := c.Status(ctx); err != nil || st != "running" {
		t.Fatalf("after errors: status %q, %v", st, err)
	}
}

func TestDialBusyMonitorTimesOut(t *testing.T) {
	vm := startQEMU(t)
	_ = dial(t, vm)
	start := time.Now()
	c2, err := Dial(vm.qmpPath, time.Second)
	if err == nil {
		c2.Close()
		t.Fatal("second client on a busy monitor: no error")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Dial took %v with a 1s timeout", d)
	}
	t.Log(err)
	if _, err := Dial(filepath.Join(vm.dir, "missing.sock"), time.Second); err == nil {
		t.Fatal("dial of a missing socket: no error")
	}
}

func TestClosedClient(t *testing.T) {
	vm := startQEMU(t)
	c, err := Dial(vm.qmpPath, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	c.Close()
	if _, err := c.Status(ctxT(t, 5*time.Second)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Status after Close: %v, want ErrClosed", err)
	}
}

func TestAttachCheckDetach(t *testing.T) {
	vm := startQEMU(t)
	c := dial(t, vm)
	sock := startBackend(t, vm, "vu0", 2)
	mac := mustMAC("52:54:00:ab:cd:01")

	if nics, err := c.NICs(ctxT(t, 5*time.Second)); err != nil || len(nics) != 0 {
		t.Fatalf("before attach: NICs %v, %v; want none", nics, err)
	}
	if err := c.CheckMAC(ctxT(t, 5*time.Second), mac); !errors.Is(err, ErrMACNotFound) {
		t.Fatalf("CheckMAC with no NICs: %v", err)
	} else {
		t.Log(err)
	}

	if err := c.AttachVhostUser(ctxT(t, 20*time.Second), AttachOptions{ID: "nic0", Socket: sock, MAC: mac, Queues: 2}); err != nil {
		t.Fatal(err)
	}
	nics, err := c.NICs(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("NICs: %v", nics)
	if len(nics) != 1 || nics[0].ID != "nic0" || nics[0].Netdev != "nic0-net" ||
		nics[0].MAC.String() != mac.String() || nics[0].CurrentMAC.String() != mac.String() {
		t.Fatalf("NICs = %v, want nic0 on nic0-net with %s", nics, mac)
	}
	if err := c.CheckMAC(ctxT(t, 5*time.Second), mac); err != nil {
		t.Fatal(err)
	}
	wrong := mustMAC("52:54:00:ab:cd:99")
	err = c.CheckMAC(ctxT(t, 5*time.Second), wrong)
	if !errors.Is(err, ErrMACNotFound) || !strings.Contains(err.Error(), wrong.String()) ||
		!strings.Contains(err.Error(), mac.String()) || !strings.Contains(err.Error(), "nic0") {
		t.Fatalf("CheckMAC(%s) = %v; want ErrMACNotFound naming %s and the NIC found", wrong, err, mac)
	}
	t.Log(err)

	// Same id again: chardev-add fails, nothing is added, the NIC stays.
	sock2 := startBackend(t, vm, "vu1", 1)
	err = c.AttachVhostUser(ctxT(t, 20*time.Second), AttachOptions{ID: "nic0", Socket: sock2, MAC: wrong})
	if err == nil || !strings.Contains(err.Error(), "chardev") {
		t.Fatalf("attach with a used id: %v", err)
	}
	t.Log(err)
	if err := c.CheckMAC(ctxT(t, 5*time.Second), mac); err != nil {
		t.Fatal(err)
	}

	// No guest OS: device_del is never acknowledged.
	start := time.Now()
	err = c.DetachVhostUser(ctxT(t, 2*time.Second), "nic0")
	if !errors.Is(err, ErrUnplugTimeout) {
		t.Fatalf("detach without a guest: %v, want ErrUnplugTimeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("detach took %v with a 2s bound", d)
	}
	t.Log(err)
	if !contains(chardevs(t, c), "nic0-chr") || !strings.Contains(netdevs(t, c), "nic0-net") {
		t.Fatal("detach timed out but removed the chardev or netdev the device still uses")
	}
	// The client is still usable after a detach timeout.
	if _, err := c.Status(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
}

func TestAttachRollback(t *testing.T) {
	vm := startQEMU(t)
	c := dial(t, vm)
	sock := startBackend(t, vm, "vu0", 1)

	// A device that already has the id makes device_add, the last step, fail.
	if err := c.Run(ctxT(t, 5*time.Second), "device_add",
		map[string]any{"driver": "pci-testdev", "id": "dup"}, nil); err != nil {
		t.Fatal(err)
	}
	err := c.AttachVhostUser(ctxT(t, 20*time.Second), AttachOptions{ID: "dup", Socket: sock, MAC: mustMAC("52:54:00:00:00:01")})
	var qe *Error
	if !errors.As(err, &qe) || qe.Command != "device_add" {
		t.Fatalf("attach with a duplicate device id: %v, want a device_add *Error", err)
	}
	if strings.Contains(err.Error(), "rollback") {
		t.Fatalf("rollback failed: %v", err)
	}
	t.Log(err)
	if contains(chardevs(t, c), "dup-chr") {
		t.Fatal("chardev dup-chr left after rollback")
	}
	if n := netdevs(t, c); strings.Contains(n, "dup-net") {
		t.Fatalf("netdev dup-net left after rollback:\n%s", n)
	}

	// The same backend can be used again: the rollback closed its connection.
	if err := c.AttachVhostUser(ctxT(t, 20*time.Second), AttachOptions{ID: "ok0", Socket: sock, MAC: mustMAC("52:54:00:00:00:02")}); err != nil {
		t.Fatal(err)
	}
	if err := c.CheckMAC(ctxT(t, 5*time.Second), mustMAC("52:54:00:00:00:02")); err != nil {
		t.Fatal(err)
	}
}

func TestAttachValidation(t *testing.T) {
	vm := startQEMU(t)
	c := dial(t, vm)
	mac := mustMAC("52:54:00:00:00:01")
	ctx := ctxT(t, 10*time.Second)
	for _, tc := range []struct {
		name string
		o    AttachOptions
		want string
	}{
		{"bad id", AttachOptions{ID: "0bad", Socket: "/x", MAC: mac}, "invalid device id"},
		{"no socket", AttachOptions{ID: "a", MAC: mac}, "no vhost-user socket"},
		{"no mac", AttachOptions{ID: "a", Socket: "/x"}, "6-byte MAC"},
		{"multicast", AttachOptions{ID: "a", Socket: "/x", MAC: mustMAC("01:00:5e:00:00:01")}, "multicast"},
		{"queues", AttachOptions{ID: "a", Socket: "/x", MAC: mac, Queues: -1}, "queues"},
		{"no backend", AttachOptions{ID: "a", Socket: filepath.Join(vm.dir, "none.sock"), MAC: mac}, "backend not accepting"},
	} {
		err := c.AttachVhostUser(ctx, tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	if n, err := c.NICs(ctx); err != nil || len(n) != 0 {
		t.Fatalf("after refused attaches: %v, %v", n, err)
	}
	if l := chardevs(t, c); len(l) != 1 { // the QMP monitor's own
		t.Fatalf("chardevs after refused attaches: %v", l)
	}
}
