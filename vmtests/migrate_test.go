package vmtests

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
	"github.com/xdp-hostd/xdp-hostd/qmp"
	"github.com/xdp-hostd/xdp-hostd/traffic"
	"github.com/xdp-hostd/xdp-hostd/vhost"
	"github.com/xdp-hostd/xdp-hostd/vmtests/vmproto"
)

// TestLiveMigrationDirtyLog: a booted guest whose NIC is the vhost package's
// device receives a steady UDP stream while QEMU live-migrates it (to a
// pipe: exec:cat). QEMU shares a dirty log (SET_LOG_BASE), turns logging on
// (VHOST_F_LOG_ALL, VHOST_VRING_F_LOG) while the device writes RX buffers
// and used rings, and stops the rings (GET_VRING_BASE) when the source
// stops. The migration must complete with no write left unlogged and the
// rings stopped.
func TestLiveMigrationDirtyLog(t *testing.T) {
	SkipWithoutQEMU(t)
	const (
		guestMAC = "52:54:00:00:ab:01"
		guestIP  = "10.202.0.50"
		port     = 40100
	)
	logs := &testnet.SyncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var txFrames atomic.Uint64
	dev, err := vhost.NewNetDevice(vhost.NetConfig{Logger: log, TX: func(_ int, f [][]byte) { txFrames.Add(uint64(len(f))) }})
	if err != nil {
		t.Fatal(err)
	}
	sock := TempSocketPath(t, "mig.sock")
	srv, err := vhost.NewServer(sock, dev, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-served:
		case <-time.After(10 * time.Second):
			t.Error("vhost server did not stop")
		}
		if t.Failed() {
			t.Logf("back-end log:\n%s", logs.String())
		}
	})
	qmpPath := filepath.Join(filepath.Dir(sock), "qmp.sock")
	g := StartT(t, WithName("mig"), WithVhostUserNIC(VhostUserNIC{Socket: sock, MAC: guestMAC}),
		WithQEMUArgs("-qmp", "unix:"+qmpPath+",server=on,wait=off"))
	cfg, err := Call[vmproto.ConfigureResult](g, vmproto.Configure{MAC: guestMAC, Addr: guestIP + "/24"})
	if err != nil || !cfg.Carrier {
		t.Fatalf("configure guest NIC: %+v %v", cfg, err)
	}
	if _, err := g.Do(vmproto.UDPListen{Port: port}); err != nil {
		t.Fatal(err)
	}

	// A steady stream into the guest, 20 frames every 2 ms, until the
	// rings stop.
	mac, _ := net.ParseMAC(guestMAC)
	src, _ := net.ParseMAC("52:54:00:00:ab:fe")
	spec := traffic.FrameSpec{Dst: mac, Src: src, SrcIP: netip.MustParseAddr("10.202.0.1"), DstIP: netip.MustParseAddr(guestIP),
		SrcPort: 7100, DstPort: port, Size: 600, Tag: 1}
	marker := fmt.Sprintf("mig-%d", time.Now().UnixNano())
	var placed, offered atomic.Uint64
	streamFrames(t, spec, func() (*vhost.NetDevice, *atomic.Uint64, string) { return dev, &placed, marker }, &offered)
	waitUntil(t, "frames reaching the guest", 10*time.Second, func() bool { return placed.Load() > 100 })

	c, err := qmp.Dial(qmpPath, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	before := placed.Load()
	start := time.Now()
	if err := c.Run(context.Background(), "migrate", map[string]any{"uri": "exec:cat > /dev/null"}, nil); err != nil {
		t.Fatalf("QMP migrate: %v", err)
	}
	var st struct {
		Status    string `json:"status"`
		ErrorDesc string `json:"error-desc"`
		RAM       struct {
			Transferred int64 `json:"transferred"`
			Dirty       int64 `json:"dirty-pages-rate"`
		} `json:"ram"`
	}
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if err := c.Run(context.Background(), "query-migrate", nil, &st); err != nil {
			t.Fatal(err)
		}
		if st.Status == "completed" {
			break
		}
		if st.Status == "failed" || st.Status == "cancelled" {
			t.Fatalf("migration %s: %s", st.Status, st.ErrorDesc)
		}
		if time.Now().After(deadline) {
			t.Fatalf("migration still %q after 90 s", st.Status)
		}
	}
	during := placed.Load() - before
	t.Logf("migration completed in %v, %d bytes sent; %d frames placed in the guest meanwhile (%d offered in all); guest sent %d",
		time.Since(start).Round(time.Millisecond), st.RAM.Transferred, during, offered.Load(), txFrames.Load())
	out := logs.String()
	for _, want := range []string{"dirty log mapped", "dirty page logging (VHOST_F_LOG_ALL)\" socket", " on=true log_mapped=true"} {
		if !strings.Contains(out, want) {
			t.Errorf("back-end log lacks %q: QEMU did not turn logging on", want)
		}
	}
	if during == 0 {
		t.Error("no frame was placed in the guest while migrating: the logging path was not exercised")
	}
	if m := dev.LogMissed(); m != 0 {
		t.Errorf("%d page writes were not logged", m)
	}
	// The source stopped the device (GET_VRING_BASE): nothing more is
	// written into the guest.
	waitUntil(t, "source rings stopped", 10*time.Second, func() bool { return !dev.Ready(0) })
	if _, err := dev.Deliver(0, [][]byte{make([]byte, 60)}); err == nil {
		t.Error("Deliver after the source stopped succeeded")
	}
}

func waitUntil(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// streamFrames delivers 20 frames of spec every 2 ms until the test ends,
// each with "MARKER SEQ " after its headers (SEQ counting up from 0 across
// the whole stream); pick gives, per batch, the device to deliver into, the
// counter of frames it placed and the marker. offered counts every frame.
func streamFrames(t *testing.T, spec traffic.FrameSpec, pick func() (*vhost.NetDevice, *atomic.Uint64, string), offered *atomic.Uint64) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		frames := make([][]byte, 20)
		for i := range frames {
			frames[i] = make([]byte, spec.Size)
		}
		for seq := uint32(0); ; {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			dev, placed, marker := pick()
			for _, f := range frames {
				spec.Build(f, seq)
				copy(f[traffic.HeaderLen:], fmt.Sprintf("%s %d ", marker, seq))
				seq++
			}
			n, _ := dev.Deliver(0, frames)
			placed.Add(uint64(n))
			offered.Add(uint64(len(frames)))
		}
	}()
	t.Cleanup(func() {
		close(stop)
		wg.Wait()
	})
}
