package main

import (
	"bytes"
	"context"
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

	"libvirt.org/go/libvirtxml"

	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/guestprog"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/libvirthook"
)

func repoFile(t *testing.T, rel string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "..", rel))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
	return p
}

// cli runs the binary and returns its exit code, stdout and stderr.
func cli(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return execLine(t, append([]string{binary}, args...)...)
}

// execLine runs a command line (at most a minute) and returns its exit
// code, stdout and stderr.
func execLine(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

func TestProgVerifyOffline(t *testing.T) {
	good := repoFile(t, "bpf/examples/bridge.o")
	code, out, _ := cli(t, "prog", "verify", good)
	if code != 0 || !strings.Contains(out, "accepted") {
		t.Errorf("good program: exit %d\n%s", code, out)
	}
	code, out, _ = cli(t, "prog", "verify", repoFile(t, "guestprog/testdata/hostile/redirect_ifindex.o"))
	if code != 1 || !strings.Contains(out, "[redirect-by-ifindex]") || !strings.Contains(out, "prog+") {
		t.Errorf("hostile program: exit %d\n%s", code, out)
	}
	code, out, _ = cli(t, "prog", "verify", "--json", repoFile(t, "guestprog/testdata/hostile/ringbuf.o"))
	var rep guestprog.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 1 || rep.Accepted || len(rep.Violations) < 2 {
		t.Errorf("--json: exit %d, %v\n%s", code, err, out)
	}
	junk := filepath.Join(t.TempDir(), "junk.o")
	os.WriteFile(junk, []byte("not an ELF object"), 0o644)
	if code, _, stderr := cli(t, "prog", "verify", junk); code != 2 || !strings.Contains(stderr, "ELF") {
		t.Errorf("unusable input: exit %d, %s", code, stderr)
	}
	if code, _, _ := cli(t, "prog", "verify"); code != 2 {
		t.Errorf("no file: exit %d", code)
	}
	if os.Geteuid() == 0 {
		code, out, _ = cli(t, "prog", "verify", "--kernel", good)
		if code != 0 || !strings.Contains(out, "kernel verifier: accepted") {
			t.Errorf("--kernel: exit %d\n%s", code, out)
		}
	}
	code, out, _ = cli(t, "caps")
	var caps guestprog.Capabilities
	if err := json.Unmarshal([]byte(out), &caps); err != nil || code != 0 || caps.ABIVersion != guestprog.ABIVersion || len(caps.Helpers) == 0 {
		t.Errorf("caps: exit %d, %v\n%s", code, err, out)
	}
}

// prog verify holds objects to the daemon's quotas: memory of maps and
// programs (per-CPU values for every possible CPU, whatever CPUs the
// command may run on), programs per object; __kconfig externs are refused;
// caps reports the quotas and the host facts a program can still observe.
func TestProgVerifyQuotas(t *testing.T) {
	verify := func(t *testing.T, prefix []string, file string) (int, guestprog.Report) {
		t.Helper()
		args := append(prefix, "prog", "verify", "--json", repoFile(t, "guestprog/testdata/hostile/"+file+".o"))
		code, out, _ := execLine(t, args...)
		var rep guestprog.Report
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("%s: %v\n%s", file, err, out)
		}
		return code, rep
	}
	rules := func(r guestprog.Report) string {
		var b strings.Builder
		for _, v := range r.Violations {
			fmt.Fprintln(&b, v)
		}
		return b.String()
	}
	for file, want := range map[string]string{
		"percpu_bytes":  "[memory-quota]",
		"hash_bytes":    "[memory-quota]",
		"bloom_big":     "[memory-quota]",
		"many_programs": "[program-limit]",
		"kconfig":       "[host-state] map .kconfig: extern LINUX_KERNEL_VERSION",
	} {
		code, rep := verify(t, []string{binary}, file)
		if code != 1 || rep.Accepted || !strings.Contains(rules(rep), want) {
			t.Errorf("%s: exit %d, want 1 and %s in:\n%s", file, code, want, rules(rep))
		}
	}
	// Pinned to one CPU, the estimate of per-CPU values is the same.
	if _, err := exec.LookPath("taskset"); err != nil {
		testnet.SkipOrFail(t, "taskset (util-linux) is missing")
	}
	_, free := verify(t, []string{binary}, "percpu_bytes")
	_, pinned := verify(t, []string{"taskset", "-c", "0", binary}, "percpu_bytes")
	if free.MapMemory != pinned.MapMemory || free.MapMemory < uint64(1<<20)*8*uint64(guestprog.PossibleCPUs()) {
		t.Errorf("per-CPU map estimate %d bytes, %d under taskset -c 0; want the same, for %d possible CPUs", free.MapMemory, pinned.MapMemory, guestprog.PossibleCPUs())
	}

	code, out, _ := cli(t, "caps")
	var caps guestprog.Capabilities
	if err := json.Unmarshal([]byte(out), &caps); err != nil || code != 0 {
		t.Fatalf("caps: exit %d, %v\n%s", code, err, out)
	}
	if lim := caps.Limits; lim.Memory != 16<<20 || lim.MaxPrograms != 64 || lim.MaxInstructions != 16384 || lim.PossibleCPUs != guestprog.PossibleCPUs() {
		t.Errorf("caps limits %+v", lim)
	}
	for _, want := range []string{`"memory_bytes"`, `"max_programs"`, `"possible_cpus"`, `"host_facts"`, `"bpf_ktime_get_ns"`, `"bpf_get_smp_processor_id"`, `"memory-quota"`, `"program-limit"`} {
		if !strings.Contains(out, want) {
			t.Errorf("caps lack %s:\n%s", want, out)
		}
	}
}

// The prog commands end to end through the CLI against a running daemon,
// including bad requests (clear errors, nothing changed).
func TestProgThroughDaemon(t *testing.T) {
	testnet.RequireRoot(t)
	topo := testnet.Topology(t, 4)
	s, stderr := startDaemon(t, fmt.Sprintf(`{"uplinks": [{"name": %q, "netns": %q, "vms": [%s, %s]}]}`, topo.Uplink, topo.HostNS,
		vmJSON("vm1", "02:00:00:00:00:01", "[1]"), vmJSON("vm2", "02:00:00:00:00:02", "[2]")))
	sock := strings.TrimPrefix(s, "--socket=")
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode: %v %v", fi, err)
	}
	port, tx := repoFile(t, "bpf/guests/port.o"), repoFile(t, "bpf/guests/tx.o")

	list := func() []daemon.ProgramRecord {
		t.Helper()
		code, out, errs := cli(t, "prog", "list", "--json", s)
		var recs []daemon.ProgramRecord
		if err := json.Unmarshal([]byte(out), &recs); code != 0 || err != nil {
			t.Fatalf("list: exit %d %v\n%s%s", code, err, out, errs)
		}
		return recs
	}

	code, out, errs := cli(t, "prog", "load", "--vm", "vm1", "--json", s, port)
	var recs []daemon.ProgramRecord
	if err := json.Unmarshal([]byte(out), &recs); code != 0 || err != nil || len(recs) != 1 || recs[0].ID != 1 {
		t.Fatalf("load: exit %d %v\n%s%s", code, err, out, errs)
	}
	first := recs[0]
	if code, _, errs := cli(t, "prog", "load", "--vm", "vm1", s, tx); code != 1 || !strings.Contains(errs, "--expect 1") {
		t.Errorf("second load: exit %d, %s", code, errs)
	}
	if code, _, errs := cli(t, "prog", "replace", "--vm", "vm1", "--expect", "9", s, tx); code != 1 || !strings.Contains(errs, "runs program 1, not 9") {
		t.Errorf("stale replace: exit %d, %s", code, errs)
	}
	if l := list(); len(l) != 1 || l[0].KernelID != first.KernelID {
		t.Errorf("a failed request changed something: %+v", l)
	}
	hostile := repoFile(t, "guestprog/testdata/hostile/fib_lookup.o")
	if code, _, errs := cli(t, "prog", "replace", "--vm", "vm1", "--expect", "1", s, hostile); code != 1 || !strings.Contains(errs, "[host-state]") {
		t.Errorf("hostile replace: exit %d, %s", code, errs)
	}
	if code, _, errs := cli(t, "prog", "load", "--vm", "nope", s, port); code != 1 || !strings.Contains(errs, `no such VM: "nope"`) {
		t.Errorf("unknown VM: exit %d, %s", code, errs)
	}
	if code, _, errs := cli(t, "prog", "show", s, "abc"); code != 2 || !strings.Contains(errs, "not a program ID") {
		t.Errorf("bad ID: exit %d, %s", code, errs)
	}
	if code, _, errs := cli(t, "prog", "replace", "--vm", "vm1", s, tx); code != 2 || !strings.Contains(errs, "--expect") {
		t.Errorf("replace without --expect: exit %d, %s", code, errs)
	}
	code, out, _ = cli(t, "prog", "replace", "--vm", "vm1", "--expect", "1", s, tx)
	if code != 0 || !strings.Contains(out, "vm1") {
		t.Errorf("replace: exit %d\n%s", code, out)
	}
	l := list()
	if len(l) != 1 || l[0].ID != 2 || l[0].Entry != "tx" || l[0].SHA256 == first.SHA256 || l[0].Verdicts == nil {
		t.Errorf("after replace: %+v", l)
	}
	if code, out, _ := cli(t, "prog", "show", s, "2"); code != 0 || !strings.Contains(out, "tx") {
		t.Errorf("show: exit %d\n%s", code, out)
	}
	if code, out, _ := cli(t, "status", s); code != 0 || !strings.Contains(out, "vm2") || !strings.Contains(out, "built-in") {
		t.Errorf("status: exit %d\n%s", code, out)
	}
	if code, out, _ := cli(t, "caps", "--vm", "vm1", s); code != 0 || !strings.Contains(out, `"uplink_xdp_features"`) {
		t.Errorf("caps --vm: exit %d\n%s", code, out)
	} else {
		// The daemon's limits are the ones `prog verify` checks against.
		var daemonCaps guestprog.Capabilities
		json.Unmarshal([]byte(out), &daemonCaps)
		if daemonCaps.Limits != guestprog.DefaultLimits() {
			t.Errorf("daemon limits %+v, prog verify uses %+v", daemonCaps.Limits, guestprog.DefaultLimits())
		}
	}
	if code, _, errs := cli(t, "prog", "rm", "--vm", "vm1", "--expect", "1", s); code != 1 || !strings.Contains(errs, "not 1") {
		t.Errorf("stale rm: exit %d, %s", code, errs)
	}
	if code, _, errs := cli(t, "prog", "rm", "--vm", "vm1", "--expect", "2", s); code != 0 {
		t.Errorf("rm: exit %d, %s", code, errs)
	}
	if l := list(); len(l) != 0 {
		t.Errorf("after rm: %+v", l)
	}
	code, out, _ = cli(t, "prog", "load", "--vm", "vm2", "--json", s, port)
	if err := json.Unmarshal([]byte(out), &recs); code != 0 || err != nil || recs[0].ID != 3 {
		t.Errorf("IDs must not be reused: exit %d %v\n%s", code, err, out)
	}
	for _, ev := range []string{"audit=prog_load", "audit=prog_replace", "audit=prog_remove", "audit=prog_refused"} {
		if !strings.Contains(stderr.String(), ev) {
			t.Errorf("no %s audit event in the log", ev)
		}
	}
}

// Without a daemon, the prog commands say how to fix it.
func TestProgNoDaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	code, _, errs := cli(t, "prog", "list", "--socket", sock)
	if code != 1 || !strings.Contains(errs, "cannot reach xdp-hostd") || !strings.Contains(errs, "xdp-hostd run") {
		t.Errorf("exit %d, %s", code, errs)
	}
}

// daemonProc is `xdp-hostd run` started by a test.
type daemonProc struct {
	cmd    *exec.Cmd
	socket string
	stderr *syncBuffer
}

// runDaemonBinary starts `xdp-hostd run` with the configuration text cfg
// and waits (at most 20 s) until it is ready. The caller stops it.
func runDaemonBinary(t *testing.T, cfg string, extra ...string) *daemonProc {
	t.Helper()
	dir := t.TempDir()
	p := &daemonProc{socket: filepath.Join(dir, "api.sock"), stderr: &syncBuffer{}}
	cfgPath := filepath.Join(dir, "config.json")
	os.WriteFile(cfgPath, []byte(cfg), 0o644)
	p.cmd = exec.Command(binary, append([]string{"run", "--config", cfgPath, "--socket", p.socket}, extra...)...)
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(p.stderr.String(), "msg=ready"); {
		if time.Now().After(deadline) {
			p.cmd.Process.Kill()
			p.cmd.Wait()
			t.Fatalf("daemon not ready:\n%s", p.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p
}

// stop sends SIGTERM and waits (at most 20 s); it returns the exit error.
func (p *daemonProc) stop(t *testing.T) error {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		<-done
		return errors.New("the daemon did not stop within 20s of SIGTERM")
	}
}

// startDaemon runs the daemon until the test ends, then checks it stopped
// cleanly and removed its socket; it returns the --socket flag.
func startDaemon(t *testing.T, cfg string) (string, *syncBuffer) {
	t.Helper()
	p := runDaemonBinary(t, cfg)
	t.Cleanup(func() {
		if err := p.stop(t); err != nil {
			t.Errorf("daemon exit: %v\n%s", err, p.stderr.String())
		}
		if _, err := os.Stat(p.socket); err == nil {
			t.Error("API socket left behind")
		}
	})
	return "--socket=" + p.socket, p.stderr
}

// VMs and ports through the CLI against a running daemon, including bad
// requests that name the field and change nothing.
func TestVMAndPortThroughDaemon(t *testing.T) {
	testnet.RequireRoot(t)
	topo := testnet.Topology(t, 4)
	p1, _, err := topo.AddPortPair(topo.Prefix + "p1")
	if err != nil {
		t.Fatal(err)
	}
	s, stderr := startDaemon(t, fmt.Sprintf(`{"uplinks": [{"name": %q, "netns": %q, "vms": []}]}`, topo.Uplink, topo.HostNS))

	if code, out, errs := cli(t, "vm", "add", s, "--uplink", topo.Uplink, "--name", "web", "--mac", "02:00:00:00:00:0a", "--queues", "1,2"); code != 0 || !strings.Contains(out, "web") {
		t.Fatalf("vm add: exit %d\n%s%s", code, out, errs)
	}
	for _, bad := range []struct {
		args []string
		says string
	}{
		{[]string{"--name", "db", "--mac", "nonsense"}, `mac: "nonsense" is not an Ethernet MAC address: write six hex bytes such as 52:54:00:12:34:56`},
		{[]string{"--name", "db", "--mac", "01:00:5e:00:00:01"}, `mac: "01:00:5e:00:00:01" is a multicast address`},
		{[]string{"--name", "db", "--mac", "02:00:00:00:00:0b", "--uplink", topo.Prefix + "nope"}, `no such uplink: "` + topo.Prefix + `nope" is not one of this daemon's uplinks ("` + topo.Uplink + `")`},
		{[]string{"--name", "web", "--mac", "02:00:00:00:00:0b"}, "already exists"},
		{[]string{"--name", "db", "--mac", "02:00:00:00:00:0a"}, "is already VM web's"},
		{[]string{"--name", "db", "--mac", "02:00:00:00:00:0b", "--queues", "2"}, "queue 2 is already dedicated to VM web"},
		{[]string{"--name", "db", "--mac", "02:00:00:00:00:0b", "--queues", "3", "--delivery", "vhost-user"}, "vhost_user_socket: required"},
		{[]string{"--name", "db", "--mac", "02:00:00:00:00:0b", "--delivery", "vhost-user", "--vhost-user-socket", "/tmp/x.sock"}, "needs dedicated queues"},
	} {
		args := append([]string{"vm", "add", s, "--uplink", topo.Uplink}, bad.args...)
		if code, _, errs := cli(t, args...); code != 1 || !strings.Contains(errs, bad.says) || strings.Contains(errs, "no such VM") || strings.Contains(errs, "invalid request") {
			t.Errorf("%v: exit %d, want an error saying %q (and no other error's prefix):\n%s", bad.args, code, bad.says, errs)
		}
	}
	code, out, _ := cli(t, "vm", "list", "--json", s)
	var vms []daemon.VMStatus
	if err := json.Unmarshal([]byte(out), &vms); code != 0 || err != nil || len(vms) != 1 || vms[0].Name != "web" || len(vms[0].Queues) != 2 {
		t.Fatalf("vm list after bad requests: exit %d %v\n%s", code, err, out)
	}
	if code, _, errs := cli(t, "port", "add", s, "--vm", "web", "--port", "1", "--ifname", p1); code != 0 {
		t.Errorf("port add: exit %d %s", code, errs)
	}
	if code, _, errs := cli(t, "port", "add", s, "--vm", "web", "--port", "0", "--ifname", p1); code != 1 || !strings.Contains(errs, "port 0 is the uplink") {
		t.Errorf("port 0: exit %d %s", code, errs)
	}
	if code, _, errs := cli(t, "port", "add", s, "--vm", "web", "--port", "2", "--ifname", "nope9"); code != 1 || !strings.Contains(errs, "nope9") {
		t.Errorf("missing interface: exit %d %s", code, errs)
	}
	code, out, _ = cli(t, "port", "list", "--json", s, "--vm", "web")
	var ports []hostnet.Port
	if err := json.Unmarshal([]byte(out), &ports); code != 0 || err != nil || len(ports) != 2 || ports[1].Ifname != p1 {
		t.Errorf("port list: exit %d %v\n%s", code, err, out)
	}
	if code, _, errs := cli(t, "port", "rm", s, "--vm", "web", "--port", "1"); code != 0 {
		t.Errorf("port rm: exit %d %s", code, errs)
	}
	if code, _, errs := cli(t, "vm", "rm", s, "web"); code != 0 {
		t.Errorf("vm rm: exit %d %s", code, errs)
	}
	if code, _, errs := cli(t, "vm", "show", s, "web"); code != 1 || !strings.Contains(errs, "no such VM") {
		t.Errorf("vm show after rm: exit %d %s", code, errs)
	}
	if l := leftovers(t, topo, p1); len(l) != 1 || !strings.HasPrefix(l[0], "XDP program") {
		t.Errorf("after vm rm, only the dispatcher may remain: %v", l)
	}
	for _, ev := range []string{"audit=vm_add", "audit=port_add", "audit=port_remove", "audit=vm_remove"} {
		if !strings.Contains(stderr.String(), ev) {
			t.Errorf("no %s audit event", ev)
		}
	}
}

// The libvirt hook against a running daemon: prepare registers the domain's
// marked interfaces (a vhost-user one, and a tap libvirt made), release
// removes them; unrelated domains are left alone; malformed XML is refused.
func TestLibvirtHook(t *testing.T) {
	testnet.RequireRoot(t)
	topo := testnet.Topology(t, 4)
	tap, err := hostnet.CreateTap(hostnet.TapOptions{Name: "web1-tap", NetNS: topo.HostNS})
	if err != nil {
		t.Fatal(err)
	}
	defer tap.Close()
	vsock := filepath.Join(t.TempDir(), "web1.sock")
	s, _ := startDaemon(t, fmt.Sprintf(`{"vm_socket_dirs": [%q], "uplinks": [{"name": %q, "netns": %q, "vms": []}]}`, filepath.Dir(vsock), topo.Uplink, topo.HostNS))
	sock := strings.TrimPrefix(s, "--socket=")
	dom := libvirtxml.Domain{Type: "kvm", Name: "web1", UUID: "0c1e5f2a-3b4d-4e6f-8a9b-0c1d2e3f4a5b",
		Metadata: &libvirtxml.DomainMetadata{XML: fmt.Sprintf(`<xh:xdp-hostd xmlns:xh=%q><xh:interface mac="52:54:00:00:00:01" uplink=%q queues="1"/><xh:interface mac="52:54:00:00:00:02" uplink=%q queues="2"/></xh:xdp-hostd>`,
			libvirthook.Namespace, topo.Uplink, topo.Uplink)},
		Devices: &libvirtxml.DomainDeviceList{Interfaces: []libvirtxml.DomainInterface{
			{MAC: &libvirtxml.DomainInterfaceMAC{Address: "52:54:00:00:00:01"},
				Source: &libvirtxml.DomainInterfaceSource{VHostUser: &libvirtxml.DomainInterfaceSourceVHostUser{
					Chardev: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Path: vsock, Mode: "client"}}}}},
			{MAC: &libvirtxml.DomainInterfaceMAC{Address: "52:54:00:00:00:02"},
				Source: &libvirtxml.DomainInterfaceSource{Ethernet: &libvirtxml.DomainInterfaceSourceEthernet{}},
				Target: &libvirtxml.DomainInterfaceTarget{Dev: "web1-tap"}},
		}}}
	xmlDoc, err := dom.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	hook := func(stdin string, args ...string) (int, string) {
		t.Helper()
		cmd := exec.Command(binary, append([]string{"hook", "qemu"}, args...)...)
		cmd.Env = append(os.Environ(), "XDP_HOSTD_SOCKET="+sock)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	vmNames := func() []string {
		_, out, _ := cli(t, "vm", "list", "--json", s)
		var vms []daemon.VMStatus
		json.Unmarshal([]byte(out), &vms)
		var names []string
		for _, v := range vms {
			names = append(names, v.Name)
		}
		return names
	}
	if code, out := hook(xmlDoc, "web1", "prepare", "begin", "-"); code != 0 {
		t.Fatalf("prepare: exit %d\n%s", code, out)
	}
	if got := fmt.Sprint(vmNames()); got != "[web1-0 web1-1]" {
		t.Errorf("VMs after prepare: %s", got)
	}
	if _, err := os.Stat(vsock); err != nil {
		t.Errorf("the vhost-user socket is not served: %v", err)
	}
	if code, out, _ := cli(t, "qemu-args", s, "web1-0"); code != 0 || !strings.Contains(out, "path="+vsock) || !strings.Contains(out, "mac=52:54:00:00:00:01") || !strings.Contains(out, "rx_queue_size=1024") {
		t.Errorf("qemu-args: exit %d\n%s", code, out)
	}
	other := libvirtxml.Domain{Type: "kvm", Name: "other"}
	otherDoc, _ := other.Marshal()
	if code, out := hook(otherDoc, "other", "prepare", "begin", "-"); code != 0 || len(vmNames()) != 2 {
		t.Errorf("unrelated domain: exit %d\n%s", code, out)
	}
	if code, out := hook("<domain><name>broken", "broken", "prepare", "begin", "-"); code != 1 || !strings.Contains(out, "domain XML") {
		t.Errorf("malformed XML: exit %d\n%s", code, out)
	}
	if code, out := hook(xmlDoc, "web1", "release", "end", "-"); code != 0 {
		t.Errorf("release: exit %d\n%s", code, out)
	}
	if names := vmNames(); len(names) != 0 {
		t.Errorf("VMs after release: %v", names)
	}
}
