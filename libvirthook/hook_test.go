package libvirthook

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"libvirt.org/go/libvirtxml"

	"github.com/xdp-hostd/xdp-hostd/client"
	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/guestprog"
)

// domainXML builds a domain document with libvirtxml, as libvirt would
// hand it to the hook.
func domainXML(t *testing.T, name, metadata string, ifaces ...libvirtxml.DomainInterface) string {
	t.Helper()
	dom := libvirtxml.Domain{Type: "kvm", Name: name, UUID: uuidOf(name), Devices: &libvirtxml.DomainDeviceList{Interfaces: ifaces}}
	if metadata != "" {
		dom.Metadata = &libvirtxml.DomainMetadata{XML: metadata}
	}
	s, err := dom.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// uuidOf is a domain's UUID made from its name.
func uuidOf(name string) string {
	var b [16]byte
	copy(b[:], name)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func vhostUser(mac, path, mode string) libvirtxml.DomainInterface {
	return libvirtxml.DomainInterface{
		MAC: &libvirtxml.DomainInterfaceMAC{Address: mac},
		Source: &libvirtxml.DomainInterfaceSource{VHostUser: &libvirtxml.DomainInterfaceSourceVHostUser{
			Chardev: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Path: path, Mode: mode}}}},
		Model: &libvirtxml.DomainInterfaceModel{Type: "virtio"},
	}
}

func ethernet(mac, dev string) libvirtxml.DomainInterface {
	return libvirtxml.DomainInterface{
		MAC:    &libvirtxml.DomainInterfaceMAC{Address: mac},
		Source: &libvirtxml.DomainInterfaceSource{Ethernet: &libvirtxml.DomainInterfaceSourceEthernet{}},
		Target: &libvirtxml.DomainInterfaceTarget{Dev: dev},
	}
}

func bridge(mac string) libvirtxml.DomainInterface {
	return libvirtxml.DomainInterface{
		MAC:    &libvirtxml.DomainInterfaceMAC{Address: mac},
		Source: &libvirtxml.DomainInterfaceSource{Bridge: &libvirtxml.DomainInterfaceSourceBridge{Bridge: "virbr0"}},
	}
}

func meta(ifaces ...string) string {
	return fmt.Sprintf(`<xh:xdp-hostd xmlns:xh="%s">%s</xh:xdp-hostd>`, Namespace, strings.Join(ifaces, ""))
}

func TestParse(t *testing.T) {
	one := domainXML(t, "web1", meta(`<xh:interface mac="52:54:00:00:00:01" uplink="eth1" queues="1, 2"/>`),
		bridge("52:54:00:00:00:09"), vhostUser("52:54:00:00:00:01", "/run/xdp-hostd/vms/web1.sock", "client"))
	name, vms, err := Parse(strings.NewReader(one))
	if err != nil || name != "web1" || len(vms) != 1 {
		t.Fatalf("%s %+v %v", name, vms, err)
	}
	want := VM{Uplink: "eth1", Config: daemon.VMConfig{Name: "web1", UUID: uuidOf("web1"), MAC: "52:54:00:00:00:01", Queues: []int{1, 2}, Delivery: "vhost-user", VhostUserSocket: "/run/xdp-hostd/vms/web1.sock"}}
	if fmt.Sprint(vms[0]) != fmt.Sprint(want) {
		t.Errorf("got %+v, want %+v", vms[0], want)
	}

	two := domainXML(t, "db", meta(`<xh:interface mac="52:54:00:00:00:02" uplink="eth1"/>`, `<xh:interface mac="52:54:00:00:00:03" uplink="eth2" queues="3"/>`),
		ethernet("52:54:00:00:00:02", "db-tap0"), vhostUser("52:54:00:00:00:03", "/run/x/db.sock", ""))
	_, vms, err = Parse(strings.NewReader(two))
	if err != nil || len(vms) != 2 || vms[0].Config.Name != "db-0" || vms[0].Config.Tap != "db-tap0" || vms[1].Config.Name != "db-1" || vms[1].Uplink != "eth2" {
		t.Errorf("two interfaces: %+v %v", vms, err)
	}

	// The guest agent's channel goes to the first VM; QEMU must connect.
	reconnectSecs := uint(1)
	agentDom := func(mode string) string {
		dom := libvirtxml.Domain{Type: "kvm", Name: "app", UUID: "4b5a9c1e-0f3d-4c5e-9a7b-1d2e3f405162", Metadata: &libvirtxml.DomainMetadata{XML: meta(`<xh:interface mac="52:54:00:00:00:05" uplink="eth1" queues="4"/>`)},
			Devices: &libvirtxml.DomainDeviceList{
				Interfaces: []libvirtxml.DomainInterface{vhostUser("52:54:00:00:00:05", "/run/x/app.sock", "client")},
				Channels: []libvirtxml.DomainChannel{
					{Source: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Path: "/run/x/qga.sock", Mode: "bind"}},
						Target: &libvirtxml.DomainChannelTarget{VirtIO: &libvirtxml.DomainChannelTargetVirtIO{Name: "org.qemu.guest_agent.0"}}},
					{Source: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Path: "/run/x/app.agent.sock", Mode: mode,
						Reconnect: &libvirtxml.DomainChardevSourceReconnect{Enabled: "yes", Timeout: &reconnectSecs}}},
						Target: &libvirtxml.DomainChannelTarget{VirtIO: &libvirtxml.DomainChannelTargetVirtIO{Name: "org.xdp-hostd.agent.0"}}},
				}}}
		s, err := dom.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	if _, vms, err := Parse(strings.NewReader(agentDom("connect"))); err != nil || len(vms) != 1 || vms[0].Config.AgentSocket != "/run/x/app.agent.sock" || vms[0].Config.UUID != "4b5a9c1e-0f3d-4c5e-9a7b-1d2e3f405162" {
		t.Errorf("agent channel: %+v %v", vms, err)
	}
	if _, _, err := Parse(strings.NewReader(agentDom("bind"))); err == nil || !strings.Contains(err.Error(), "mode='connect'") {
		t.Errorf("agent channel QEMU would serve: %v", err)
	}

	// Unrelated domains: nothing to do.
	for _, doc := range []string{
		domainXML(t, "other", "", bridge("52:54:00:00:00:04")),
		domainXML(t, "other", `<foo:bar xmlns:foo="https://example.org/x"/>`, bridge("52:54:00:00:00:04")),
	} {
		if _, vms, err := Parse(strings.NewReader(doc)); err != nil || len(vms) != 0 {
			t.Errorf("unrelated domain: %+v %v", vms, err)
		}
	}
}

func TestParseRefusesBadDomains(t *testing.T) {
	for _, tc := range []struct {
		doc, says string
	}{
		{"<domain><name>x</name", "domain XML"},
		{"not xml at all", "domain XML"},
		{domainXML(t, "d", meta(`<xh:interface mac="52:54:00:00:00:05" uplink="eth1"/>`), bridge("52:54:00:00:00:06")), "no interface with that MAC"},
		{domainXML(t, "d", meta(`<xh:interface mac="zz" uplink="eth1"/>`)), `mac "zz" is not an Ethernet MAC address (write six hex bytes`},
		{domainXML(t, "d", meta(`<xh:interface mac="52:54:00:00:00:00:00:05" uplink="eth1"/>`)), `mac "52:54:00:00:00:00:00:05" is not an Ethernet MAC address`},
		{domainXML(t, "d", meta(`<xh:interface mac="52:54:00:00:00:05"/>`), vhostUser("52:54:00:00:00:05", "/s", "client")), "uplink= is required"},
		{domainXML(t, "d", meta(`<xh:interface mac="52:54:00:00:00:05" uplink="e"/>`), vhostUser("52:54:00:00:00:05", "/s", "server")), "mode='client'"},
		{domainXML(t, "d", meta(`<xh:interface mac="52:54:00:00:00:05" uplink="e"/>`), bridge("52:54:00:00:00:05")), "vhostuser"},
		{domainXML(t, "d", meta(`<xh:interface mac="52:54:00:00:00:05" uplink="e" queues="a"/>`), vhostUser("52:54:00:00:00:05", "/s", "")), "queues"},
	} {
		_, _, err := Parse(strings.NewReader(tc.doc))
		if !errors.Is(err, ErrDomain) || !strings.Contains(err.Error(), tc.says) || strings.Count(err.Error(), "mac ") > 1 {
			t.Errorf("%.60q: %v, want ErrDomain saying %q", tc.doc, err, tc.says)
		}
	}
}

// fakeAPI records calls; addFail makes AddVMs fail as the daemon does
// (it answers, having undone the batch), lost as a transport error (no
// answer: the batch may have gone through). vms is what the daemon has.
type fakeAPI struct {
	added, removed, attached []string
	addFail, lost            bool
	vms                      []daemon.VMStatus
}

func (f *fakeAPI) Caps(context.Context, string) (*guestprog.Capabilities, error) {
	return &guestprog.Capabilities{}, nil
}

func (f *fakeAPI) AddVMs(_ context.Context, reqs []daemon.AddVMRequest) ([]daemon.VMStatus, error) {
	switch {
	case f.addFail:
		return nil, &client.Error{Status: 409, APIError: daemon.APIError{Error: "vms[1] (db-1): uplink busy"}}
	case f.lost:
		return nil, errors.New("context deadline exceeded")
	}
	var out []daemon.VMStatus
	for _, r := range reqs {
		f.added = append(f.added, r.VM.Name)
		vs := daemon.VMStatus{Name: r.VM.Name, UUID: r.VM.UUID, MAC: r.VM.MAC, TapMode: r.VM.TapMode}
		out = append(out, vs)
		f.vms = append(f.vms, vs)
	}
	return out, nil
}

func (f *fakeAPI) VMs(context.Context) ([]daemon.VMStatus, error) { return f.vms, nil }

func (f *fakeAPI) RemoveOwnedVM(_ context.Context, name string, o daemon.VMOwner) error {
	f.removed = append(f.removed, name+"/"+o.MAC)
	return errors.New("gone already")
}

func (f *fakeAPI) AttachTap(_ context.Context, vm, tap string, o *daemon.VMOwner) (*daemon.VMStatus, error) {
	f.attached = append(f.attached, vm+"="+tap)
	return &daemon.VMStatus{Name: vm}, nil
}

func TestRun(t *testing.T) {
	two := domainXML(t, "db", meta(`<xh:interface mac="52:54:00:00:00:02" uplink="eth1"/>`, `<xh:interface mac="52:54:00:00:00:03" uplink="eth2" queues="3"/>`),
		ethernet("52:54:00:00:00:02", "db-tap0"), vhostUser("52:54:00:00:00:03", "/run/x/db.sock", ""))
	logf := func(string, ...any) {}
	ctx := context.Background()

	api := &fakeAPI{}
	if err := Run(ctx, api, "prepare", "begin", strings.NewReader(two), logf); err != nil || len(api.added) != 2 {
		t.Errorf("prepare: %v %+v", err, api)
	}
	// started attaches the managed tap (libvirt made it by now).
	if err := Run(ctx, api, "started", "begin", strings.NewReader(two), logf); err != nil || fmt.Sprint(api.attached) != "[db-0=db-tap0]" {
		t.Errorf("started: %v %+v", err, api)
	}
	// A failure the daemon answered: it undid the batch; the hook removes
	// nothing (a VM of that name may be another registration's).
	api = &fakeAPI{addFail: true}
	err := Run(ctx, api, "prepare", "begin", strings.NewReader(two), logf)
	if err == nil || !strings.Contains(err.Error(), "db-1") || len(api.removed) != 0 {
		t.Errorf("failed prepare: %v %+v", err, api)
	}
	// No answer: the batch may have gone through; the hook removes it (as
	// this domain's: UUID and MAC), even though ctx has run out.
	api = &fakeAPI{lost: true}
	done, cancel := context.WithCancel(ctx)
	err = Run(done, api, "prepare", "begin", strings.NewReader(two), logf)
	cancel()
	if err == nil || fmt.Sprint(api.removed) != "[db-0/52:54:00:00:00:02 db-1/52:54:00:00:00:03]" {
		t.Errorf("prepare without an answer: %v %+v", err, api)
	}
	// Release removes what the daemon has with the domain's UUID and MACs,
	// found by UUID even when the release XML lacks the tap's name (a
	// managed tap); others' VMs (another UUID, or this UUID with a MAC
	// the domain does not mark) stay. It never fails the teardown.
	api = &fakeAPI{vms: []daemon.VMStatus{
		{Name: "db-0", UUID: uuidOf("db"), MAC: "52:54:00:00:00:02"},
		{Name: "db-1", UUID: uuidOf("db"), MAC: "52:54:00:00:00:03"},
		{Name: "db", UUID: uuidOf("other"), MAC: "52:54:00:00:00:02"},
		{Name: "x", UUID: uuidOf("db"), MAC: "52:54:00:00:00:09"},
	}}
	noTarget := domainXML(t, "db", meta(`<xh:interface mac="52:54:00:00:00:02" uplink="eth1"/>`, `<xh:interface mac="52:54:00:00:00:03" uplink="eth2" queues="3"/>`),
		ethernet("52:54:00:00:00:02", ""), vhostUser("52:54:00:00:00:03", "/run/x/db.sock", ""))
	if err := Run(ctx, api, "release", "end", strings.NewReader(noTarget), logf); err != nil || fmt.Sprint(api.removed) != "[db-0/52:54:00:00:00:02 db-1/52:54:00:00:00:03]" {
		t.Errorf("release: %v %+v", err, api.removed)
	}
	if err := Run(ctx, api, "release", "end", strings.NewReader("garbage"), logf); err != nil {
		t.Errorf("release with garbage XML: %v", err)
	}
	// Other operations and unrelated domains: nothing.
	api = &fakeAPI{}
	Run(ctx, api, "stopped", "end", strings.NewReader(two), logf)
	Run(ctx, api, "prepare", "begin", strings.NewReader(domainXML(t, "o", "", bridge("52:54:00:00:00:04"))), logf)
	if len(api.added)+len(api.removed)+len(api.attached) != 0 {
		t.Errorf("calls for nothing: %+v", api)
	}
}

// Managed and unmanaged <interface type='ethernet'>: libvirt creates a
// managed tap itself after prepare (the daemon must not: "already
// exists"), and opens an unmanaged one by name with QEMU's flags.
func TestParseTapModes(t *testing.T) {
	unmanaged := ethernet("52:54:00:00:00:03", "u-tap")
	unmanaged.Target.Managed = "no"
	unmanaged.Driver = &libvirtxml.DomainInterfaceDriver{Queues: 2}
	doc := domainXML(t, "t", meta(`<xh:interface mac="52:54:00:00:00:01" uplink="e"/>`, `<xh:interface mac="52:54:00:00:00:02" uplink="e"/>`, `<xh:interface mac="52:54:00:00:00:03" uplink="e"/>`),
		ethernet("52:54:00:00:00:01", "m-tap"), ethernet("52:54:00:00:00:02", "vnet7"), unmanaged)
	_, vms, err := Parse(strings.NewReader(doc))
	if err != nil || len(vms) != 3 {
		t.Fatalf("%+v %v", vms, err)
	}
	for i, want := range []struct{ mode, tap string }{{"external", "m-tap"}, {"external", ""}, {"qemu", "u-tap"}} {
		if c := vms[i].Config; c.TapMode != want.mode || c.Tap != want.tap {
			t.Errorf("interface %d: tap mode %q tap %q, want %q %q", i, c.TapMode, c.Tap, want.mode, want.tap)
		}
	}
	if vms[2].Config.TapQueues != 2 || vms[1].TargetDev != "vnet7" {
		t.Errorf("%+v", vms)
	}
	noName := ethernet("52:54:00:00:00:01", "")
	noName.Target.Managed = "no"
	if _, _, err := Parse(strings.NewReader(domainXML(t, "t", meta(`<xh:interface mac="52:54:00:00:00:01" uplink="e"/>`), noName))); err == nil || !strings.Contains(err.Error(), "managed='no' needs the tap's name") {
		t.Errorf("unmanaged tap without a name: %v", err)
	}
}

// A daemon that accepts connections but never answers (stopped, hung)
// costs libvirt a few seconds per hook call, not the call's whole time:
// prepare fails and release gives up after the probe.
func TestHungDaemonIsCheap(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "hung.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c) // held open, never answered
		}
	}()
	doc := domainXML(t, "hung", meta(`<xh:interface mac="52:54:00:00:00:02" uplink="eth1"/>`), ethernet("52:54:00:00:00:02", "hung-tap"))
	var logs []string
	logf := func(f string, a ...any) { logs = append(logs, fmt.Sprintf(f, a...)) }
	c := client.New(sock)
	start := time.Now()
	err = Run(context.Background(), c, "prepare", "begin", strings.NewReader(doc), logf)
	prepare := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "did not answer within") {
		t.Errorf("prepare against a hung daemon: %v", err)
	}
	start = time.Now()
	if err := Run(context.Background(), c, "release", "end", strings.NewReader(doc), logf); err != nil {
		t.Errorf("release: %v", err)
	}
	release := time.Since(start)
	t.Logf("prepare %v, release %v; %q", prepare, release, logs)
	if total := prepare + release; total > 3*ProbeTimeout {
		t.Errorf("prepare and release took %v against a hung daemon; want about 2 x %v", total, ProbeTimeout)
	}
}
