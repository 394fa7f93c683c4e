package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/qmp"
)

// The -netdev tap line qemu-args prints for a tap VM added from the CLI
// (tap_mode qemu) is one a real QEMU accepts: QEMU opens the daemon's tap
// by name, with its own flags, and holds its only queue. A VM whose tap
// the daemon holds gets an error saying why instead of a line QEMU
// refuses; removing the VM deletes the tap.
func TestQEMUArgsTap(t *testing.T) {
	testnet.RequireRoot(t)
	qemu := testnet.RequireTool(t, "qemu-system-x86_64", "make deps (Debian: qemu-system-x86)")
	nsenter := testnet.RequireTool(t, "nsenter", "util-linux")
	topo := testnet.Topology(t, 4)
	s, _ := startDaemon(t, fmt.Sprintf(`{"uplinks": [{"name": %q, "netns": %q, "vms": []}]}`, topo.Uplink, topo.HostNS))
	tap := topo.Prefix + "q"
	if code, _, errs := cli(t, "vm", "add", s, "--uplink", topo.Uplink, "--name", "qa1", "--mac", "52:54:00:00:a1:01", "--tap", tap); code != 0 {
		t.Fatalf("vm add: %s", errs)
	}
	code, out, errs := cli(t, "qemu-args", s, "qa1")
	if code != 0 || !strings.Contains(out, "-netdev tap,id=xhnet0,ifname="+tap+",script=no,downscript=no") {
		t.Fatalf("qemu-args: exit %d\n%s%s", code, out, errs)
	}

	// QEMU, in the uplink's namespace (where the tap is), with that line.
	qmpSock := filepath.Join(t.TempDir(), "qmp.sock")
	args := append([]string{"--net=" + topo.HostNS, qemu, "-nodefaults", "-no-user-config", "-display", "none", "-machine", "pc", "-accel", "tcg", "-m", "64", "-S",
		"-qmp", "unix:" + qmpSock + ",server=on,wait=off"}, strings.Fields(out)...)
	cmd := exec.Command(nsenter, args...)
	var qout syncBuffer
	cmd.Stdout, cmd.Stderr = &qout, &qout
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(qmpSock); err == nil {
			break
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("QEMU refused the line qemu-args printed: %v\n%s", err, qout.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("QEMU did not come up:\n%s", qout.String())
		}
	}
	// QEMU serves QMP before it sets up its netdevs: ask it, and make sure
	// it did not exit.
	c, err := qmp.Dial(qmpSock, 10*time.Second)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var st struct {
			Status string `json:"status"`
		}
		err = c.Run(ctx, "query-status", nil, &st)
		cancel()
		c.Close()
	}
	time.Sleep(200 * time.Millisecond)
	select {
	case werr := <-exited:
		exited <- werr
		t.Fatalf("QEMU refused the line qemu-args printed: %v\n%s", werr, qout.String())
	default:
	}
	if err != nil {
		t.Fatalf("QEMU's QMP: %v\n%s", err, qout.String())
	}
	h, err := netlink.NewHandleAt(testnet.Runner(t, topo.HostNS).Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(tap)
	if err != nil {
		t.Fatal(err)
	}
	if tt, ok := l.(*netlink.Tuntap); !ok || tt.Flags&netlink.TUNTAP_MULTI_QUEUE != 0 || tt.NonPersist {
		t.Errorf("tap %s: %+v, want a persistent single-queue tap", tap, l)
	}

	// A tap the daemon holds: qemu-args says why QEMU cannot open it.
	if code, _, errs := cli(t, "vm", "add", s, "--uplink", topo.Uplink, "--name", "qa2", "--mac", "52:54:00:00:a1:02", "--tap", topo.Prefix+"h", "--tap-mode", "held"); code != 0 {
		t.Fatalf("vm add held: %s", errs)
	}
	if code, out, errs := cli(t, "qemu-args", s, "qa2"); code != 1 || !strings.Contains(errs, "--tap-mode qemu") {
		t.Errorf("qemu-args of a held tap: exit %d\n%s%s", code, out, errs)
	}

	// Removing the VM deletes the tap (QEMU's fd then sees it gone).
	if code, _, errs := cli(t, "vm", "rm", s, "qa1"); code != 0 {
		t.Fatalf("vm rm: %s", errs)
	}
	if _, err := h.LinkByName(tap); err == nil {
		t.Errorf("tap %s left after vm rm", tap)
	}
}
