package vhosttest

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/vhost"
)

// TestRecycle: a sink's receive counts what the device placed, reposts the
// buffers (the device fills the ring again and again) and asks for an
// interrupt at the next frame, so an event-driven sink is woken once per
// batch.
func TestRecycle(t *testing.T) {
	dev, err := vhost.NewNetDevice(vhost.NetConfig{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "vm.sock")
	srv, err := vhost.NewServer(sock, dev, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ctx) }()
	t.Cleanup(func() { cancel(); srv.Close(); <-done })

	const size = 1024
	f := Dial(t, sock, Options{Size: size})
	f.PostRX(size)
	deadline := time.Now().Add(5 * time.Second)
	for !dev.Ready(0) {
		if time.Now().After(deadline) {
			t.Fatal("queues not ready")
		}
		time.Sleep(time.Millisecond)
	}
	frame := make([]byte, 64)
	batch := make([][]byte, 256)
	for i := range batch {
		batch[i] = frame
	}
	var buf [8]byte
	total := 0
	for round := range 3 * size / len(batch) {
		if n, err := dev.Deliver(0, batch); n != len(batch) {
			t.Fatalf("round %d: delivered %d, %v (buffers not reposted?)", round, n, err)
		}
		if n, _ := unix.Read(f.CallFD(0), buf[:]); n != 8 {
			t.Fatalf("round %d: no interrupt for the batch", round)
		}
		got := f.Recycle()
		if got != len(batch) {
			t.Fatalf("round %d: Recycle counted %d, want %d", round, got, len(batch))
		}
		total += got
	}
	if total != 3*size {
		t.Fatalf("counted %d", total)
	}
}
