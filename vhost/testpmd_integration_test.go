package vhost

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/testpmd"
)

// startTestpmd runs DPDK's testpmd with a virtio-user port (a real
// front-end) on path, in the given forwarding mode, until the test ends.
func startTestpmd(t *testing.T, path, mode string) *testpmd.Proc {
	t.Helper()
	testpmd.Require(t)
	p, err := testpmd.Start(testpmd.Options{Vdevs: []string{"net_virtio_user0,path=" + path + ",queues=1"}, Mode: mode, Prefix: "vhosttest" + mode})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("running %s", strings.Join(p.Args, " "))
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Error(err)
		}
		if t.Failed() || testing.Verbose() {
			t.Logf("testpmd output:\n%s", p.Output())
		}
	})
	return p
}

// TestIntegrationTestpmdTX: testpmd in txonly mode transmits; frames reach
// the TX handler.
func TestIntegrationTestpmdTX(t *testing.T) {
	testpmd.Require(t)
	var frames, bad atomic.Uint64
	ts := startServer(t, NetConfig{TX: func(pair int, fs [][]byte) {
		for _, f := range fs {
			if len(f) != 64 {
				bad.Add(1)
			}
		}
		frames.Add(uint64(len(fs)))
	}})
	startTestpmd(t, ts.path, "txonly")
	deadline := time.Now().Add(30 * time.Second)
	for frames.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	start, n0 := time.Now(), frames.Load()
	for frames.Load() < 200000 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	el := time.Since(start)
	t.Logf("frames %d, %.0f frames/s (64 bytes), stats %+v", frames.Load(), float64(frames.Load()-n0)/el.Seconds(), ts.dev.Stats()[1])
	if frames.Load() < 100000 {
		t.Fatalf("received %d frames from testpmd", frames.Load())
	}
	if bad.Load() != 0 {
		t.Errorf("%d frames not 64 bytes", bad.Load())
	}
}

// TestIntegrationTestpmdRX: testpmd in rxonly mode receives what Deliver
// puts in its RX queue.
func TestIntegrationTestpmdRX(t *testing.T) {
	testpmd.Require(t)
	ts := startServer(t, NetConfig{})
	out := startTestpmd(t, ts.path, "rxonly")
	deadline := time.Now().Add(30 * time.Second)
	for !ts.dev.Ready(0) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !ts.dev.Ready(0) {
		t.Fatal("testpmd never set up the queues")
	}
	batch := make([][]byte, 32)
	for i := range batch {
		batch[i] = frame(1000, byte(i))
		copy(batch[i], "\xff\xff\xff\xff\xff\xff\x02\x00\x00\x00\x00\x01\x08\x00")
	}
	total := 0
	start := time.Now()
	for time.Now().Before(deadline) && total < 100000 {
		n, err := ts.dev.Deliver(0, batch)
		if err != nil {
			t.Fatal(err)
		}
		total += n
		if n == 0 {
			time.Sleep(100 * time.Microsecond)
		}
	}
	t.Logf("delivered %d, %.0f frames/s (1000 bytes), stats %+v", total, float64(total)/time.Since(start).Seconds(), ts.dev.Stats()[0])
	if total < 100000 {
		t.Fatalf("delivered only %d frames", total)
	}
	if !strings.Contains(out.Output(), "RX-packets") {
		t.Log("testpmd printed no statistics yet")
	}
}
