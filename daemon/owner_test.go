package daemon_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/client"
	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
)

// Removal by owner removes only a VM with that domain UUID and MAC (a
// release never takes another registration of the name); an "external" tap
// VM waits for its tap and gets it through the API, from its owner only;
// the state keeps the tap.
func TestOwnedRemovalAndAttachTap(t *testing.T) {
	testnet.RequireRoot(t)
	topo := testnet.Topology(t, 4)
	d, err := daemon.Start(&daemon.Config{StateDir: t.TempDir(), Uplinks: []daemon.UplinkConfig{{Name: topo.Uplink, NetNS: topo.HostNS}}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	sock := filepath.Join(t.TempDir(), "api.sock")
	api, err := daemon.ServeAPI(d, sock, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { api.Close() })
	c := client.New(sock)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const uuidA, uuidB = "4b5a9c1e-0f3d-4c5e-9a7b-1d2e3f405162", "0c1e5f2a-3b4d-4e6f-8a9b-0c1d2e3f4a5b"
	status := func(err error) int {
		var ce *client.Error
		if errors.As(err, &ce) {
			return ce.Status
		}
		return 0
	}

	tapName := topo.Prefix + "e"
	vs, err := c.AddVM(ctx, topo.Uplink, daemon.VMConfig{Name: "ext", UUID: uuidA, MAC: "52:54:00:00:e0:01", Tap: tapName, TapMode: "external"})
	if err != nil {
		t.Fatal(err)
	}
	if !vs.TapWaiting || vs.Tap != "" || vs.TapMode != "external" {
		t.Errorf("before its tap exists: %+v", vs)
	}
	// Not there yet: 404; then libvirt (here: a tap made by hand) makes it.
	if _, err := c.AttachTap(ctx, "ext", tapName, &daemon.VMOwner{UUID: uuidA, MAC: "52:54:00:00:e0:01"}); status(err) != http.StatusNotFound {
		t.Errorf("attach a missing tap: %v", err)
	}
	tap, err := hostnet.CreateTap(hostnet.TapOptions{Name: tapName, NetNS: topo.HostNS})
	if err != nil {
		t.Fatal(err)
	}
	defer tap.Close()
	if _, err := c.AttachTap(ctx, "ext", tapName, &daemon.VMOwner{UUID: uuidB, MAC: "52:54:00:00:e0:01"}); status(err) != http.StatusConflict {
		t.Errorf("attach by another owner: %v", err)
	}
	if _, err := c.AttachTap(ctx, "ext", "other0", nil); err == nil || !strings.Contains(err.Error(), "has tap "+tapName) {
		t.Errorf("attach another tap: %v", err)
	}
	vs, err = c.AttachTap(ctx, "ext", tapName, &daemon.VMOwner{UUID: uuidA, MAC: "52:54:00:00:e0:01"})
	if err != nil || vs.TapWaiting || vs.Tap != tapName {
		t.Fatalf("attach: %+v %v", vs, err)
	}
	if _, err := c.AttachTap(ctx, "ext", tapName, nil); err != nil {
		t.Errorf("attach again: %v", err)
	}

	// Removal: the wrong UUID or MAC is refused (409) and the VM stays.
	for _, o := range []daemon.VMOwner{{UUID: uuidB, MAC: "52:54:00:00:e0:01"}, {UUID: uuidA, MAC: "52:54:00:00:e0:02"}, {UUID: "", MAC: ""}} {
		if err := c.RemoveOwnedVM(ctx, "ext", o); err == nil {
			t.Errorf("removed by %+v", o)
		}
	}
	if _, err := c.VM(ctx, "ext"); err != nil {
		t.Fatalf("VM gone after refused removals: %v", err)
	}
	if err := c.RemoveOwnedVM(ctx, "ext", daemon.VMOwner{UUID: strings.ToUpper(uuidA), MAC: "52:54:00:00:E0:01"}); err != nil {
		t.Errorf("removal by its owner: %v", err)
	}
	if _, err := c.VM(ctx, "ext"); status(err) != http.StatusNotFound {
		t.Errorf("VM after removal: %v", err)
	}
}
