package qmp

import (
	"bufio"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeQEMU serves a QMP greeting and the capabilities handshake, then reads
// commands and never answers them: a hung QEMU main loop.
func fakeQEMU(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fake.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}` + "\n"))
		r := bufio.NewReader(c)
		if _, err := r.ReadString('\n'); err != nil {
			return
		}
		c.Write([]byte(`{"return": {}}` + "\n"))
		for {
			if _, err := r.ReadString('\n'); err != nil {
				return
			}
		}
	}()
	return path
}

func TestCommandTimeoutClosesClient(t *testing.T) {
	c, err := Dial(fakeQEMU(t), 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	_, err = c.Status(ctxT(t, 10*time.Second)) // the Client's 500ms wins
	if err == nil || !strings.Contains(err.Error(), "no reply") {
		t.Fatalf("Status on a hung QEMU: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Status took %v with a 500ms bound", d)
	}
	t.Log(err)
	if _, err := c.Status(ctxT(t, 5*time.Second)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Status after a timeout: %v, want ErrClosed", err)
	}
}
