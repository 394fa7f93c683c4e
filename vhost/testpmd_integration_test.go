package vhost

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// startTestpmd runs DPDK's testpmd with a virtio-user port (a real
// front-end) on path, in the given forwarding mode. It is killed (SIGKILL,
// by its own pid) at cleanup.
func startTestpmd(t *testing.T, path, mode string) *syncBuffer {
	t.Helper()
	bin, err := exec.LookPath("dpdk-testpmd")
	if err != nil {
		t.Skip("dpdk-testpmd not found; try: apt-get install dpdk-dev")
	}
	args := []string{
		"--no-huge", "-m", "600", "--no-pci", "--file-prefix", "vhosttest" + mode,
		"--lcores", "0@0,1@1",
		"--vdev", "net_virtio_user0,path=" + path + ",queues=1",
		"--", "--total-num-mbufs=8192", "--forward-mode=" + mode, "--stats-period", "1",
		"--no-lsc-interrupt", "--txpkts=64",
	}
	cmd := exec.Command(bin, args...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	t.Logf("running %s %s", bin, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGKILL)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("testpmd did not exit after SIGKILL")
		}
		if t.Failed() || testing.Verbose() {
			t.Logf("testpmd output:\n%s", out.String())
		}
	})
	return out
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func requireRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("testpmd needs root")
	}
}

// TestIntegrationTestpmdTX: testpmd in txonly mode transmits; frames reach
// the TX handler.
func TestIntegrationTestpmdTX(t *testing.T) {
	requireRoot(t)
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
	requireRoot(t)
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
	if !strings.Contains(out.String(), "RX-packets") {
		t.Log("testpmd printed no statistics yet")
	}
}
