package daemon

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
)

// Bad VM requests through the real API (POST /vms and /vm-batch) and the
// same VMs in a configuration file: each error has one prefix that fits
// it, names what was wrong once and says how to fix it; nothing is added.
func TestVMAddErrors(t *testing.T) {
	topo := testnet.Topology(t, 4)
	d, sock := startServing(t, &Config{Uplinks: []UplinkConfig{{Name: topo.Uplink, NetNS: topo.HostNS}}}, quiet)
	missing := topo.Prefix + "nope"

	for _, tc := range []struct {
		name   string
		uplink string // "" : the test's uplink
		vm     string // the VM's JSON
		code   int
		says   []string
		once   string // said exactly once (the bad value, quoted as JSON would)
		config bool   // the same VM in a configuration file fails alike
	}{
		{name: "missing uplink", uplink: missing, vm: `{"name": "vm1", "mac": "02:00:00:00:00:01"}`, code: 404,
			says: []string{`no such uplink: \"` + missing + `\" is not one of this daemon's uplinks (\"` + topo.Uplink + `\")`, `\"uplinks\" in the daemon's configuration file`}},
		{name: "bad MAC", vm: `{"name": "vm1", "mac": "02:00:00:00:00:zz"}`, code: 400, config: true,
			says: []string{`mac: \"02:00:00:00:00:zz\" is not an Ethernet MAC address`, "52:54:00:12:34:56"}, once: "02:00:00:00:00:zz"},
		{name: "8-byte MAC", vm: `{"name": "vm1", "mac": "02:00:00:00:00:01:02:03"}`, code: 400, config: true,
			says: []string{"is not an Ethernet MAC address", "six hex bytes"}, once: "02:00:00:00:00:01:02:03"},
		{name: "no MAC", vm: `{"name": "vm1"}`, code: 400, config: true,
			says: []string{"mac: none given", "52:54:00:12:34:56"}},
		{name: "multicast MAC", vm: `{"name": "vm1", "mac": "01:00:5e:00:00:01"}`, code: 400, config: true,
			says: []string{`mac: \"01:00:5e:00:00:01\" is a multicast address`, "unicast"}, once: "01:00:5e:00:00:01"},
		{name: "zero MAC", vm: `{"name": "vm1", "mac": "00:00:00:00:00:00"}`, code: 400, config: true,
			says: []string{`mac: \"00:00:00:00:00:00\" is all zeros`}, once: "00:00:00:00:00:00"},
		{name: "queue twice", vm: `{"name": "vm1", "mac": "02:00:00:00:00:01", "queues": [1, 1]}`, code: 400, config: true,
			says: []string{"VM vm1: queue 1 listed twice"}},
		{name: "bad name", vm: `{"name": "v m", "mac": "02:00:00:00:00:01"}`, code: 400, config: true,
			says: []string{`VM name \"v m\": use 1-64 letters`}},
		{name: "missing port interface", vm: `{"name": "vm1", "mac": "02:00:00:00:00:01", "ports": {"1": "` + missing + `"}}`, code: 404,
			says: []string{`VM vm1: port 1: no such network interface`}, once: missing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uplink := tc.uplink
			if uplink == "" {
				uplink = topo.Uplink
			}
			req := fmt.Sprintf(`{"uplink": %q, "vm": %s}`, uplink, tc.vm)
			for _, r := range []struct{ path, body, prefix string }{
				{"/v1/vms", req, `{"error":"`},
				{"/v1/vm-batch", `{"vms": [` + req + `]}`, `{"error":"vms[0] (`},
			} {
				code, body := rawRequest(t, sock, post(r.path, "application/json", r.body))
				check(t, r.path, body, code, tc.code, tc.says, tc.once)
				if !strings.HasPrefix(body, r.prefix) {
					t.Errorf("%s: %s, want it to start with %s", r.path, body, r.prefix)
				}
			}
			if !tc.config {
				return
			}
			cfg := fmt.Sprintf(`{"uplinks": [{"name": %q, "vms": [%s]}]}`, topo.Uplink, tc.vm)
			_, err := ParseConfig([]byte(cfg), "vms.json")
			if err == nil {
				t.Fatal("the configuration file is accepted")
			}
			// The file's error is the API's, after the file and the field.
			says := make([]string, len(tc.says))
			for i, s := range tc.says {
				says[i] = strings.ReplaceAll(s, `\"`, `"`)
			}
			check(t, "config", err.Error(), 400, 400, append(says, "configuration error: vms.json: uplinks[0].vms[0]: "), tc.once)
		})
	}
	if vms := d.Dataplanes()[0].VMs(); len(vms) != 0 {
		t.Errorf("refused requests added %d VMs", len(vms))
	}
}

// check fails unless msg (answered with code) says every one of says,
// quotes once exactly once, and carries no prefix of another error.
func check(t *testing.T, where, msg string, code, wantCode int, says []string, once string) {
	t.Helper()
	if code != wantCode {
		t.Errorf("%s: %d %s, want %d", where, code, msg, wantCode)
	}
	for _, s := range says {
		if !strings.Contains(msg, s) {
			t.Errorf("%s: %s\ndoes not say %s", where, msg, s)
		}
	}
	if once != "" && strings.Count(msg, once) != 1 {
		t.Errorf("%s: %s\nsays %s %d times, want once", where, msg, once, strings.Count(msg, once))
	}
	for _, wrong := range []string{"no such VM", "invalid request", "ports: VM"} {
		if strings.Contains(msg, wrong) {
			t.Errorf("%s: %s\nsays %q: a prefix of another error", where, msg, wrong)
		}
	}
}

// startServing starts a daemon with cfg and its API on a socket in a
// temporary directory, both closed when t ends; it returns the daemon and
// the socket's path.
func startServing(t *testing.T, cfg *Config, log *slog.Logger) (*Daemon, string) {
	t.Helper()
	d, err := Start(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	sock := filepath.Join(t.TempDir(), "api.sock")
	api, err := ServeAPI(d, sock, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { api.Close() })
	return d, sock
}
