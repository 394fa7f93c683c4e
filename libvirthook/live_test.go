package libvirthook

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"libvirt.org/go/libvirtxml"

	"github.com/xdp-hostd/xdp-hostd/client"
	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
)

// A domain with many interfaces whose prepare runs out of time mid-way,
// against a live daemon: the hook fails, and neither a VM of the domain
// nor one of its taps is left (the daemon undoes the batch its caller gave
// up on; the hook's own removal has time of its own).
func TestPrepareDeadlineLeavesNothing(t *testing.T) {
	testnet.RequireRoot(t)
	topo := testnet.Topology(t, 4)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	d, err := daemon.Start(&daemon.Config{Uplinks: []daemon.UplinkConfig{{Name: topo.Uplink, NetNS: topo.HostNS}}}, log)
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
	logf := func(f string, a ...any) { t.Logf(f, a...) }

	domain := func(name string, n int) string {
		var md []string
		var ifaces []libvirtxml.DomainInterface
		for i := 0; i < n; i++ {
			mac := fmt.Sprintf("02:00:00:%02x:%02x:%02x", len(name), i>>8, i&0xff)
			md = append(md, fmt.Sprintf(`<xh:interface mac=%q uplink=%q/>`, mac, topo.Uplink))
			ifaces = append(ifaces, ethernet(mac, fmt.Sprintf("%s%d", name, i)))
		}
		return domainXML(t, name, meta(md...), ifaces...)
	}
	vmCount := func() int {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		vms, err := c.VMs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(vms)
	}

	// How long a VM takes here: a small domain, registered and released.
	const probe = 8
	start := time.Now()
	if err := Run(context.Background(), c, "prepare", "begin", strings.NewReader(domain("pr", probe)), logf); err != nil {
		t.Fatal(err)
	}
	perVM := time.Since(start) / probe
	if err := Run(context.Background(), c, "release", "end", strings.NewReader(domain("pr", probe)), logf); err != nil || vmCount() != 0 {
		t.Fatalf("release: %v, %d VMs left", err, vmCount())
	}

	// A domain of 150 interfaces, with time for about a third of them.
	const n = 150
	deadline := perVM * n / 3
	t.Logf("%v per VM; deadline %v for %d interfaces", perVM, deadline, n)
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	err = Run(ctx, c, "prepare", "begin", strings.NewReader(domain("big", n)), logf)
	if err == nil {
		t.Fatalf("prepare of %d interfaces succeeded within %v: the deadline did not run out", n, deadline)
	}
	t.Logf("prepare failed as it should: %v", err)
	// The daemon notices its caller gone and undoes the batch.
	left := vmCount()
	for end := time.Now().Add(30 * time.Second); left != 0 && time.Now().Before(end); left = vmCount() {
		time.Sleep(100 * time.Millisecond)
	}
	if left != 0 {
		t.Errorf("%d VMs of the failed domain left in the daemon", left)
	}
	h, err := netlink.NewHandleAt(testnet.Runner(t, topo.HostNS).Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "big") {
			t.Errorf("tap %s of the failed domain left", l.Attrs().Name)
		}
	}
}
