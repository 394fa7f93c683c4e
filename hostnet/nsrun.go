package hostnet

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// NSRunner runs functions inside one network namespace. Several kernel
// interfaces resolve an ifindex in the caller's namespace (XDP link creation,
// device map updates, /dev/net/tun), so everything the dataplane does to a
// namespace that is not the caller's goes through Do.
//
// The zero value runs in the caller's namespace.
type NSRunner struct {
	ns   netns.NsHandle
	path string
}

// NewNSRunner returns a runner for the namespace at path (for example
// /run/netns/NAME). An empty path means the caller's own namespace.
func NewNSRunner(path string) (*NSRunner, error) {
	if path == "" {
		return &NSRunner{ns: -1}, nil
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	return &NSRunner{ns: h, path: path}, nil
}

// Path is the namespace's path, or "" for the caller's namespace.
func (r *NSRunner) Path() string {
	if r == nil {
		return ""
	}
	return r.path
}

// Handle is the namespace handle, or -1 for the caller's namespace.
func (r *NSRunner) Handle() netns.NsHandle {
	if r == nil || r.path == "" {
		return -1
	}
	return r.ns
}

// Do runs f on an OS thread inside the namespace and returns its error. The
// thread is restored (or, if that fails, retired) afterwards.
func (r *NSRunner) Do(f func() error) error {
	if r == nil || r.path == "" {
		return f()
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(r.ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", r.path, err)
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: the runtime discards it when the
		// goroutine ends, so no other goroutine runs in the wrong namespace.
		return fmt.Errorf("return from network namespace %s: %w (after: %v)", r.path, err, ferr)
	}
	runtime.UnlockOSThread()
	return ferr
}

// Close releases the namespace handle.
func (r *NSRunner) Close() error {
	if r == nil || r.path == "" {
		return nil
	}
	return r.ns.Close()
}
