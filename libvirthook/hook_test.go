package libvirthook

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"

	"github.com/xdp-hostd/xdp-hostd/client"
	"github.com/xdp-hostd/xdp-hostd/daemon"
)

// domainXML builds a domain document with libvirtxml, as libvirt would
// hand it to the hook.
func domainXML(t *testing.T, name, metadata string, ifaces ...libvirtxml.DomainInterface) string {
	t.Helper()
	dom := libvirtxml.Domain{Type: "kvm", Name: name, Devices: &libvirtxml.DomainDeviceList{Interfaces: ifaces}}
	if metadata != "" {
		dom.Metadata = &libvirtxml.DomainMetadata{XML: metadata}
	}
	s, err := dom.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return s
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
	want := VM{Uplink: "eth1", Config: daemon.VMConfig{Name: "web1", MAC: "52:54:00:00:00:01", Queues: []int{1, 2}, Delivery: "vhost-user", VhostUserSocket: "/run/xdp-hostd/vms/web1.sock"}}
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
		{domainXML(t, "d", meta(`<xh:interface mac="zz" uplink="eth1"/>`)), `mac "zz"`},
		{domainXML(t, "d", meta(`<xh:interface mac="52:54:00:00:00:05"/>`), vhostUser("52:54:00:00:00:05", "/s", "client")), "uplink= is required"},
		{domainXML(t, "d", meta(`<xh:interface mac="52:54:00:00:00:05" uplink="e"/>`), vhostUser("52:54:00:00:00:05", "/s", "server")), "mode='client'"},
		{domainXML(t, "d", meta(`<xh:interface mac="52:54:00:00:00:05" uplink="e"/>`), bridge("52:54:00:00:00:05")), "vhostuser"},
		{domainXML(t, "d", meta(`<xh:interface mac="52:54:00:00:00:05" uplink="e" queues="a"/>`), vhostUser("52:54:00:00:00:05", "/s", "")), "queues"},
	} {
		_, _, err := Parse(strings.NewReader(tc.doc))
		if !errors.Is(err, ErrDomain) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%.60q: %v, want ErrDomain saying %q", tc.doc, err, tc.says)
		}
	}
}

// fakeAPI records calls; addFail makes AddVMs fail as the daemon does
// (it answers, having undone the batch), lost as a transport error (no
// answer: the batch may have gone through).
type fakeAPI struct {
	added, removed []string
	addFail, lost  bool
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
		out = append(out, daemon.VMStatus{Name: r.VM.Name})
	}
	return out, nil
}

func (f *fakeAPI) RemoveVM(_ context.Context, name string) error {
	f.removed = append(f.removed, name)
	return errors.New("gone already")
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
	// A failure the daemon answered: it undid the batch; the hook removes
	// nothing (a VM of that name may be another registration's).
	api = &fakeAPI{addFail: true}
	err := Run(ctx, api, "prepare", "begin", strings.NewReader(two), logf)
	if err == nil || !strings.Contains(err.Error(), "db-1") || len(api.removed) != 0 {
		t.Errorf("failed prepare: %v %+v", err, api)
	}
	// No answer: the batch may have gone through; the hook removes it, even
	// though ctx has run out.
	api = &fakeAPI{lost: true}
	done, cancel := context.WithCancel(ctx)
	cancel()
	err = Run(done, api, "prepare", "begin", strings.NewReader(two), logf)
	if err == nil || fmt.Sprint(api.removed) != "[db-0 db-1]" {
		t.Errorf("prepare without an answer: %v %+v", err, api)
	}
	// Release never fails the domain's teardown.
	api = &fakeAPI{}
	if err := Run(ctx, api, "release", "end", strings.NewReader(two), logf); err != nil || len(api.removed) != 2 {
		t.Errorf("release: %v %+v", err, api)
	}
	if err := Run(ctx, api, "release", "end", strings.NewReader("garbage"), logf); err != nil {
		t.Errorf("release with garbage XML: %v", err)
	}
	// Other operations and unrelated domains: nothing.
	api = &fakeAPI{}
	Run(ctx, api, "started", "begin", strings.NewReader(two), logf)
	Run(ctx, api, "prepare", "begin", strings.NewReader(domainXML(t, "o", "", bridge("52:54:00:00:00:04"))), logf)
	if len(api.added)+len(api.removed) != 0 {
		t.Errorf("calls for nothing: %+v", api)
	}
}
