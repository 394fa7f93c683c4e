package unixsock

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
)

func TestProbeAndListen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	if st, err := Probe(path); err != nil || st != Missing {
		t.Fatalf("missing: %v %v", st, err)
	}
	// A live socket of somebody else is neither replaced nor removed.
	other, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := Probe(path); st != Live {
		t.Fatalf("live: %v", st)
	}
	if _, err := Listen(path, true); !errors.Is(err, ErrLive) {
		t.Fatalf("Listen over a live socket: %v", err)
	}
	if c, err := net.Dial("unix", path); err != nil {
		t.Fatalf("the other socket is gone: %v", err)
	} else {
		c.Close()
	}
	other.(*net.UnixListener).SetUnlinkOnClose(false)
	other.Close()
	if st, _ := Probe(path); st != Stale {
		t.Fatalf("stale: %v", st)
	}
	if _, err := Listen(path, false); err == nil {
		t.Fatal("a stale socket was replaced without replaceStale")
	}
	l, err := Listen(path, true)
	if err != nil {
		t.Fatal(err)
	}
	// Somebody replaces the file: Close must leave theirs alone.
	os.Remove(path)
	theirs, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer theirs.Close()
	l.Close()
	if st, _ := Probe(path); st != Live {
		t.Errorf("Close removed a socket that was no longer its own: %v", st)
	}
	// Its own file is removed.
	own := filepath.Join(dir, "own.sock")
	l, err = Listen(own, false)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, err := os.Lstat(own); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("own socket left: %v", err)
	}
	// Not a socket.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	if st, _ := Probe(file); st != NotSocket {
		t.Errorf("file: %v", st)
	}
	if _, err := Listen(file, true); err == nil {
		t.Error("Listen over a regular file")
	}
}
