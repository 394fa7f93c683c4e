// Package unixsock serves unix stream sockets without harming anybody
// else's: Listen never unlinks a socket something listens on, and Close
// removes the socket file only while it is still the one Listen bound
// (not a file another program put at the same path since).
package unixsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// State is what is at a socket path.
type State int

const (
	// Missing: nothing at the path.
	Missing State = iota
	// Live: a unix socket something accepts connections on.
	Live
	// Stale: a unix socket nothing listens on (its server is gone).
	Stale
	// NotSocket: a file, directory or symbolic link that is not a socket.
	NotSocket
)

func (s State) String() string {
	switch s {
	case Missing:
		return "missing"
	case Live:
		return "a live socket"
	case Stale:
		return "a stale socket"
	case NotSocket:
		return "not a socket"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// ErrLive is wrapped by Listen's error when something listens on the path.
var ErrLive = errors.New("a live socket is there")

// probeTimeout bounds the connect that tells a live socket from a stale
// one. A listener whose backlog is full does not answer in time either; it
// is live.
const probeTimeout = time.Second

// Probe says what is at path without following a symbolic link there. A
// connect that is refused (or finds no socket) means stale; any other
// outcome counts as live, so that nothing in use is mistaken for a
// leftover.
func Probe(path string) (State, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return Missing, nil
	}
	if err != nil {
		return 0, err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return NotSocket, nil
	}
	c, err := net.DialTimeout("unix", path, probeTimeout)
	if err == nil {
		c.Close()
		return Live, nil
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
		return Stale, nil
	}
	return Live, nil
}

// Listener is a unix stream listener whose Close removes its socket file
// only if the file is still the one it bound.
type Listener struct {
	*net.UnixListener
	path     string
	dev, ino uint64
}

// Listen binds a unix stream socket at path. A stale socket there is
// replaced when replaceStale is set; a live one is never touched (the
// error wraps ErrLive), nor is anything that is not a socket.
func Listen(path string, replaceStale bool) (*Listener, error) {
	st, err := Probe(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	switch st {
	case Live:
		return nil, fmt.Errorf("%s: %w: another program serves it", path, ErrLive)
	case NotSocket:
		return nil, fmt.Errorf("%s exists and is not a socket", path)
	case Stale:
		if !replaceStale {
			return nil, fmt.Errorf("%s: a stale socket is there (nothing listens on it)", path)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false)
	l := &Listener{UnixListener: ln, path: path}
	var s syscall.Stat_t
	if err := syscall.Lstat(path, &s); err != nil {
		ln.Close()
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	l.dev, l.ino = uint64(s.Dev), s.Ino
	return l, nil
}

// Path is where the listener is bound.
func (l *Listener) Path() string { return l.path }

// Close stops listening and removes the socket file if it is still this
// listener's.
func (l *Listener) Close() error {
	err := l.UnixListener.Close()
	var s syscall.Stat_t
	if syscall.Lstat(l.path, &s) == nil && uint64(s.Dev) == l.dev && s.Ino == l.ino {
		os.Remove(l.path)
	}
	return err
}
