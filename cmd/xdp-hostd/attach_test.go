package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/qmp"
	"github.com/xdp-hostd/xdp-hostd/vmtests"
)

// startQEMUWithQMP starts a QEMU (TCG, no guest) with shared memory and a
// QMP socket, and an optional virtio-net NIC of its own with mac.
func startQEMUWithQMP(t *testing.T, mac string) string {
	return startQEMU(t, qemuOpts{mac: mac})
}

// qemuOpts shape the guest-less QEMU of startQEMU.
type qemuOpts struct {
	mac     string   // a user-mode NIC other0 with this MAC
	machine string   // default pc
	private bool     // plain -m memory (share=off) instead of a shared memfd
	extra   []string // more arguments (-device pcie-root-port,...)
}

// startQEMU starts a QEMU with no guest OS (TCG) and a QMP socket, and
// returns the socket's path; the QEMU is killed when the test ends.
func startQEMU(t *testing.T, o qemuOpts) string {
	t.Helper()
	if testing.Short() {
		t.Skip("starts QEMU: skipped in -short mode")
	}
	qemu := testnet.RequireTool(t, "qemu-system-x86_64", "apt-get install qemu-system-x86")
	if o.machine == "" {
		o.machine = "pc"
	}
	path := filepath.Join(t.TempDir(), "qmp.sock")
	args := []string{"-nodefaults", "-no-user-config", "-display", "none", "-machine", o.machine, "-accel", "tcg", "-m", "128"}
	if !o.private {
		args = append(args, "-object", "memory-backend-memfd,id=mem,size=128M,share=on", "-numa", "node,memdev=mem")
	}
	args = append(args, "-qmp", "unix:"+path+",server=on,wait=off")
	if o.mac != "" {
		args = append(args, "-netdev", "user,id=other", "-device", "virtio-net-pci,netdev=other,id=other0,mac="+o.mac)
	}
	args = append(args, o.extra...)
	cmd := exec.Command(qemu, args...)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	// The monitor answers before the test hands the socket on (QEMU serves
	// one QMP client at a time, so this one is closed first). The socket
	// file exists from QEMU's bind, a moment before it listens: a refused
	// connection is retried.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		_, serr := os.Stat(path)
		if serr == nil {
			c, err := qmp.Dial(path, 10*time.Second)
			if err == nil {
				c.Close()
				return path
			}
			serr = err
			if !errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(deadline) {
				t.Fatalf("QEMU's QMP socket: %v\n%s", err, out.String())
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("QEMU made no QMP socket (%v):\n%s", serr, out.String())
		}
	}
}

// vm attach, check and detach against a real QEMU with a booted guest: the VM's vhost-user NIC is
// hot-plugged with the registered MAC and socket, checked, and unplugged; a
// tap VM is refused; a QEMU whose NIC has another MAC fails the check.
func TestVMAttachCheckDetach(t *testing.T) {
	testnet.RequireRoot(t)
	topo := testnet.Topology(t, 4)
	vsock := filepath.Join(t.TempDir(), "vm1.sock")
	s, _ := startDaemon(t, fmt.Sprintf(`{"vm_socket_dirs": [%q], "uplinks": [{"name": %q, "netns": %q, "vms": [
		{"name": "vm1", "mac": "52:54:00:00:cc:01", "queues": [1], "delivery": "vhost-user", "vhost_user_socket": %q},
		{"name": "vm2", "mac": "52:54:00:00:cc:02", "queues": [2]}]}]}`, filepath.Dir(vsock), topo.Uplink, topo.HostNS, vsock))
	// A booted guest: unplugging needs one that answers ACPI hot-unplug.
	vmtests.SkipWithoutQEMU(t)
	q := filepath.Join(t.TempDir(), "qmp.sock")
	vmtests.StartT(t, vmtests.WithName("attach"), vmtests.WithSharedMemory(true), vmtests.WithQEMUArgs("-qmp", "unix:"+q+",server=on,wait=off"))

	code, out, errs := cli(t, "vm", "attach", s, "--qmp", q, "--json", "vm1")
	var rep QMPReport
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil || !rep.MACMatches || len(rep.NICs) != 1 || !strings.Contains(rep.NICs[0], "52:54:00:00:cc:01") {
		t.Fatalf("attach: exit %d\n%s%s", code, out, errs)
	}
	if code, out, errs := cli(t, "vm", "check", s, "--qmp", q, "vm1"); code != 0 || !strings.Contains(out, "QEMU status:") {
		t.Errorf("check: exit %d\n%s%s", code, out, errs)
	}
	if code, _, errs := cli(t, "vm", "attach", s, "--qmp", q, "vm2"); code != 1 || !strings.Contains(errs, "not vhost-user") {
		t.Errorf("attach a tap VM: exit %d\n%s", code, errs)
	}
	if code, out, errs := cli(t, "vm", "detach", s, "--qmp", q, "--json", "vm1"); code != 0 || json.Unmarshal([]byte(out), &rep) != nil || len(rep.NICs) != 0 {
		t.Errorf("detach: exit %d\n%s%s", code, out, errs)
	}
	if code, _, errs := cli(t, "vm", "check", s, "--qmp", q, "vm1"); code != 1 || !strings.Contains(errs, "registered with MAC 52:54:00:00:cc:01") {
		t.Errorf("check after detach: exit %d\n%s", code, errs)
	}

	other := startQEMUWithQMP(t, "52:54:00:00:dd:09")
	if code, _, errs := cli(t, "vm", "check", s, "--qmp", other, "vm1"); code != 1 || !strings.Contains(errs, "52:54:00:00:cc:01") || !strings.Contains(errs, "52:54:00:00:dd:09") {
		t.Errorf("check with another MAC: exit %d\n%s", code, errs)
	}
	if code, _, errs := cli(t, "vm", "check", s, "--qmp", filepath.Join(t.TempDir(), "none"), "vm1"); code != 1 || !strings.Contains(errs, "server=on,wait=off") {
		t.Errorf("no QMP socket: exit %d\n%s", code, errs)
	}
}
