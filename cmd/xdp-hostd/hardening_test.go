package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"libvirt.org/go/libvirtxml"

	"github.com/xdp-hostd/xdp-hostd/client"
	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/libvirthook"
)

// startDaemonAt runs the daemon with its API socket at apiSock until the
// test ends (then checks it stopped cleanly).
func startDaemonAt(t *testing.T, cfg, apiSock string) (*client.Client, *daemonProc) {
	t.Helper()
	p := runDaemonBinary(t, cfg, "--socket", apiSock)
	p.socket = apiSock
	t.Cleanup(func() {
		if err := p.stop(t); err != nil {
			t.Errorf("daemon exit: %v\n%s", err, p.stderr.String())
		}
	})
	return client.New(apiSock), p
}

// listenUnix serves a unix socket at path (accepting and closing
// connections) until the test ends.
func listenUnix(t *testing.T, path string) {
	t.Helper()
	os.MkdirAll(filepath.Dir(path), 0o755)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// staleUnix leaves a socket file at path that nothing listens on.
func staleUnix(t *testing.T, path string) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
}

func alive(path string) bool {
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func vmNamesOf(t *testing.T, c *client.Client) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	vms, err := c.VMs(ctx)
	if err != nil {
		t.Fatalf("the API does not answer: %v", err)
	}
	var names []string
	for _, v := range vms {
		names = append(names, v.Name)
	}
	slices.Sort(names)
	return names
}

// A VM's socket path cannot take over a socket through the API: not the
// API's own, not another VM's (vhost-user or agent), not a live socket of
// another program, not a stale one the daemon did not leave, and not one
// outside vm_socket_dirs (directly, through '..' or a symbolic link).
// Every refusal names the collision; the API and every socket stay.
func TestVMSocketsCannotTakeOver(t *testing.T) {
	testnet.RequireRoot(t)
	topo := testnet.Topology(t, 4)
	dir := t.TempDir() // the one directory VM sockets may be in
	outside := t.TempDir()
	api := filepath.Join(dir, "api.sock")
	agent1 := filepath.Join(dir, "vm1.agent")
	vu1 := filepath.Join(dir, "vu1.sock")
	c, _ := startDaemonAt(t, fmt.Sprintf(`{"vm_socket_dirs": [%q], "uplinks": [{"name": %q, "netns": %q, "vms": [
		{"name": "vm1", "mac": "02:00:00:00:00:01", "queues": [1], "agent_socket": %q},
		{"name": "vu1", "mac": "02:00:00:00:00:02", "queues": [2], "delivery": "vhost-user", "vhost_user_socket": %q}]}]}`,
		dir, topo.Uplink, topo.HostNS, agent1, vu1), api)
	foreign := filepath.Join(dir, "app", "app.sock")
	listenUnix(t, foreign)
	stale := filepath.Join(dir, "stale.sock")
	staleUnix(t, stale)
	if err := os.Symlink(outside, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}

	vhost := func(path string) daemon.VMConfig {
		return daemon.VMConfig{Name: "evil", MAC: "02:00:00:00:00:0e", Queues: []int{3}, Delivery: "vhost-user", VhostUserSocket: path}
	}
	agent := func(path string) daemon.VMConfig {
		return daemon.VMConfig{Name: "evil", MAC: "02:00:00:00:00:0e", Queues: []int{3}, AgentSocket: path}
	}
	for _, tc := range []struct {
		name string
		vm   daemon.VMConfig
		says string
	}{
		{"vhost-user on the API socket", vhost(api), "is the daemon's API socket"},
		{"agent on the API socket", agent(api), "is the daemon's API socket"},
		{"vhost-user on another VM's vhost-user socket", vhost(vu1), "is VM vu1's vhost-user socket"},
		{"vhost-user on another VM's agent socket", vhost(agent1), "is VM vm1's agent channel"},
		{"agent on another VM's vhost-user socket", agent(vu1), "is VM vu1's vhost-user socket"},
		{"agent on another VM's agent socket", agent(agent1), "is VM vm1's agent channel"},
		{"vhost-user on a live socket", vhost(foreign), "is a live socket"},
		{"agent on a live socket", agent(foreign), "is a live socket"},
		{"a stale socket the daemon did not leave", agent(stale), "not one xdp-hostd left for VM evil"},
		{"outside the directories", vhost(filepath.Join(outside, "x.sock")), "outside the directories VM sockets may be in"},
		{"through ..", agent(dir + "/../x.sock"), "without '..'"},
		{"through a symbolic link", vhost(filepath.Join(dir, "link", "x.sock")), "through a symbolic link"},
		{"a relative path", agent("x.sock"), "absolute path"},
		{"both its sockets on one path", daemon.VMConfig{Name: "evil", MAC: "02:00:00:00:00:0e", Queues: []int{3}, Delivery: "vhost-user",
			VhostUserSocket: filepath.Join(dir, "e.sock"), AgentSocket: filepath.Join(dir, "e.sock")}, "also the VM's vhost_user_socket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := c.AddVM(ctx, topo.Uplink, tc.vm)
			if err == nil {
				defer c.RemoveVM(ctx, "evil")
			}
			if err == nil || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("got %v, want an error saying %q", err, tc.says)
			}
			if ce, ok := err.(*client.Error); !ok || ce.Status/100 != 4 {
				t.Errorf("want a 4xx answer: %#v", err)
			}
			if got := vmNamesOf(t, c); fmt.Sprint(got) != "[vm1 vu1]" {
				t.Errorf("VMs after a refusal: %v", got)
			}
			for _, s := range []string{api, agent1, vu1, foreign} {
				if !alive(s) {
					t.Errorf("%s no longer answers", s)
				}
			}
			if _, err := os.Lstat(stale); err != nil {
				t.Errorf("the stale socket of somebody else was removed: %v", err)
			}
			if _, err := os.Lstat(filepath.Join(outside, "x.sock")); err == nil {
				t.Error("a socket was created outside the allowed directories")
			}
		})
	}
	// The libvirt hook copies the path from the domain XML: the same.
	dom := libvirtxml.Domain{Type: "kvm", Name: "evil",
		Metadata: &libvirtxml.DomainMetadata{XML: fmt.Sprintf(`<xh:xdp-hostd xmlns:xh=%q><xh:interface mac="52:54:00:00:00:0e" uplink=%q queues="3"/></xh:xdp-hostd>`,
			libvirthook.Namespace, topo.Uplink)},
		Devices: &libvirtxml.DomainDeviceList{Interfaces: []libvirtxml.DomainInterface{
			{MAC: &libvirtxml.DomainInterfaceMAC{Address: "52:54:00:00:00:0e"},
				Source: &libvirtxml.DomainInterfaceSource{VHostUser: &libvirtxml.DomainInterfaceSourceVHostUser{
					Chardev: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Path: api, Mode: "client"}}}}},
		}}}
	xmlDoc, err := dom.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	hook := exec.Command(binary, "hook", "qemu", "evil", "prepare", "begin", "-")
	hook.Env = append(os.Environ(), "XDP_HOSTD_SOCKET="+api)
	hook.Stdin = strings.NewReader(xmlDoc)
	out, err := hook.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "is the daemon's API socket") {
		t.Errorf("hook prepare with the API socket as the vhost-user socket: %v\n%s", err, out)
	}
	if got := vmNamesOf(t, c); fmt.Sprint(got) != "[vm1 vu1]" || !alive(api) {
		t.Errorf("after the hook: VMs %v, API alive %v", got, alive(api))
	}

	// A path of its own under the directory is fine (subdirectories are
	// created), and removing the VM removes only its own socket.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	own := filepath.Join(dir, "vms", "ok.sock")
	if _, err := c.AddVM(ctx, topo.Uplink, vhost(own)); err != nil {
		t.Fatalf("a VM socket of its own: %v", err)
	}
	if !alive(own) {
		t.Error("the VM's own socket is not served")
	}
	if err := c.RemoveVM(ctx, "evil"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(own); err == nil {
		t.Error("the removed VM's socket is left")
	}
}

// A state that holds a VM whose socket would collide (here: the API's, as
// an older daemon accepted) does not stop the daemon: that VM is refused
// with an ERROR naming why, the others come back. A stale socket the
// previous daemon left for a VM (after a crash) is replaced.
func TestStateWithCollidingSocketStarts(t *testing.T) {
	testnet.RequireRoot(t)
	topo := testnet.Topology(t, 4)
	dir, stateDir := t.TempDir(), t.TempDir()
	api := filepath.Join(dir, "api.sock")
	crashed := filepath.Join(dir, "crashed.sock")
	staleUnix(t, crashed)
	st := daemon.State{Version: daemon.StateVersion, NextID: 1, VMs: []daemon.StateVM{
		{Uplink: topo.Uplink, Origin: "api", Config: daemon.VMConfig{Name: "evil", MAC: "02:00:00:00:00:0e", Queues: []int{1}, Delivery: "vhost-user", VhostUserSocket: api}},
		{Uplink: topo.Uplink, Origin: "api", Config: daemon.VMConfig{Name: "evil2", MAC: "02:00:00:00:00:0f", Queues: []int{2}, AgentSocket: "/etc/evil.sock"}},
		{Uplink: topo.Uplink, Origin: "api", Config: daemon.VMConfig{Name: "good", MAC: "02:00:00:00:00:01", Queues: []int{3}}},
		{Uplink: topo.Uplink, Origin: "api", Config: daemon.VMConfig{Name: "crashed", MAC: "02:00:00:00:00:02", Queues: []int{0}, AgentSocket: crashed}},
	}}
	b, _ := json.Marshal(st)
	if err := os.WriteFile(filepath.Join(stateDir, "state.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	c, p := startDaemonAt(t, fmt.Sprintf(`{"state_dir": %q, "vm_socket_dirs": [%q], "uplinks": [{"name": %q, "netns": %q, "vms": []}]}`,
		stateDir, dir, topo.Uplink, topo.HostNS), api)
	if got := vmNamesOf(t, c); fmt.Sprint(got) != "[crashed good]" {
		t.Errorf("VMs restored: %v, want crashed and good", got)
	}
	logs := p.stderr.String()
	for _, want := range []string{"is the daemon's API socket", "/etc/evil.sock is outside the directories"} {
		if !strings.Contains(logs, want) || !strings.Contains(logs, "level=ERROR") {
			t.Errorf("no ERROR saying %q:\n%s", want, logs)
		}
	}
	if !alive(crashed) {
		t.Error("the crashed VM's agent socket is not served again")
	}
}

// A VM may not take the host's MACs (the uplink's, the wire peer's), nor
// another VM's tap; a port may not be lo, nor another VM's tap unless
// asked for with --cross-vm, and then port list and the audit log say so.
// All through a running daemon.
func TestHostIdentitiesThroughDaemon(t *testing.T) {
	testnet.RequireRoot(t)
	topo := testnet.Topology(t, 4)
	pins := t.TempDir()
	t.Cleanup(func() { unix.Unmount(pins, unix.MNT_DETACH) })
	s, stderr := startDaemon(t, fmt.Sprintf(`{"pin_dir": %q, "uplinks": [{"name": %q, "netns": %q, "vms": []}]}`, pins, topo.Uplink, topo.HostNS))
	add := func(args ...string) (int, string) {
		t.Helper()
		code, _, errs := cli(t, append([]string{"vm", "add", s, "--uplink", topo.Uplink}, args...)...)
		return code, errs
	}
	for _, bad := range []struct {
		mac, says string
	}{
		{topo.UplinkMAC.String(), "is the host's (interface " + topo.Uplink + " (the uplink)"},
		{topo.WireMAC.String(), "the uplink's peer"},
		{"ff:ff:ff:ff:ff:ff", "multicast"},
	} {
		if code, errs := add("--name", "evil", "--mac", bad.mac, "--queues", "3"); code != 1 || !strings.Contains(errs, bad.says) {
			t.Errorf("MAC %s: exit %d, want an error saying %q:\n%s", bad.mac, code, bad.says, errs)
		}
	}

	t1, t2 := topo.Prefix+"t1", topo.Prefix+"t2"
	if code, errs := add("--name", "web", "--mac", "02:00:00:00:00:01", "--queues", "1", "--tap", t1); code != 0 {
		t.Fatalf("web: exit %d\n%s", code, errs)
	}
	var idx int
	testnet.Runner(t, topo.HostNS).Do(func() error {
		l, err := netlink.LinkByName(t1)
		if err == nil {
			idx = l.Attrs().Index
		}
		return err
	})
	pin := filepath.Join(pins, topo.Uplink, fmt.Sprintf("tx-%d", idx))
	if code, errs := add("--name", "db", "--mac", "02:00:00:00:00:02", "--queues", "2", "--tap", t1); code != 1 || !strings.Contains(errs, "tap "+t1+" is VM web's") {
		t.Errorf("second VM on web's tap: exit %d\n%s", code, errs)
	}
	cli(t, "vm", "rm", s, "db") // would remove the tap's transmit pin, had db been added
	if _, err := os.Stat(pin); err != nil {
		t.Errorf("web's tap transmit pin: %v", err)
	}
	if code, errs := add("--name", "db", "--mac", "02:00:00:00:00:02", "--queues", "2", "--tap", t2); code != 0 {
		t.Fatalf("db: exit %d\n%s", code, errs)
	}
	// A tap's MAC is the host's too.
	var tapMAC string
	testnet.Runner(t, topo.HostNS).Do(func() error {
		l, err := netlink.LinkByName(t2)
		if err == nil {
			tapMAC = l.Attrs().HardwareAddr.String()
		}
		return err
	})
	if code, errs := add("--name", "evil", "--mac", tapMAC, "--queues", "3"); code != 1 || !strings.Contains(errs, "interface "+t2) {
		t.Errorf("a tap's MAC: exit %d\n%s", code, errs)
	}

	if code, _, errs := cli(t, "port", "add", s, "--vm", "web", "--port", "1", "--ifname", "lo"); code != 1 || !strings.Contains(errs, "loopback") {
		t.Errorf("port to lo: exit %d\n%s", code, errs)
	}
	if code, _, errs := cli(t, "port", "add", s, "--vm", "web", "--port", "2", "--ifname", t2); code != 1 || !strings.Contains(errs, "is VM db's tap") || !strings.Contains(errs, "--cross-vm") {
		t.Errorf("port to db's tap without --cross-vm: exit %d\n%s", code, errs)
	}
	if code, _, errs := cli(t, "port", "add", s, "--vm", "web", "--port", "2", "--ifname", t2, "--cross-vm"); code != 0 {
		t.Fatalf("port to db's tap with --cross-vm: exit %d\n%s", code, errs)
	}
	code, out, _ := cli(t, "port", "list", s, "--vm", "web")
	if code != 0 || !strings.Contains(out, "INTO VM") || !strings.Contains(out, t2) || !strings.Contains(out, " db") {
		t.Errorf("port list does not show the port into db: exit %d\n%s", code, out)
	}
	code, out, _ = cli(t, "port", "list", "--json", s, "--vm", "web")
	var ports []hostnet.Port
	if err := json.Unmarshal([]byte(out), &ports); code != 0 || err != nil || len(ports) != 2 || ports[1].VM != "db" || ports[0].VM != "" {
		t.Errorf("port list --json: exit %d %v\n%s", code, err, out)
	}
	if !strings.Contains(stderr.String(), "audit=port_add vm=web port=2 ifname="+t2) || !strings.Contains(stderr.String(), "cross_vm=true into_vm=db") {
		t.Errorf("the audit log does not say the port leads into db:\n%s", stderr.String())
	}
}
