// Package nsrun runs code inside a network namespace: several kernel
// interfaces resolve an ifindex or a device name in the calling thread's
// namespace (XDP link creation, device map updates, AF_XDP bind,
// BPF_PROG_RUN's ingress_ifindex, /dev/net/tun), so code that works on a
// namespace other than its own goes through a Runner.
package nsrun

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Runner runs functions inside one network namespace. The zero value runs
// them in the caller's namespace.
type Runner struct {
	ns   netns.NsHandle
	path string
}

// New returns a runner for the namespace at path (for example
// /run/netns/NAME). An empty path means the caller's own namespace.
func New(path string) (*Runner, error) {
	if path == "" {
		return &Runner{ns: -1}, nil
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	return &Runner{ns: h, path: path}, nil
}

// Path is the namespace's path, or "" for the caller's namespace.
func (r *Runner) Path() string {
	if r == nil {
		return ""
	}
	return r.path
}

// Handle is the namespace handle, or -1 for the caller's namespace.
func (r *Runner) Handle() netns.NsHandle {
	if r == nil || r.path == "" {
		return -1
	}
	return r.ns
}

// Do runs f on an OS thread inside the namespace and returns its error. The
// thread is restored (or, if that fails, retired) afterwards.
func (r *Runner) Do(f func() error) error {
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
func (r *Runner) Close() error {
	if r == nil || r.path == "" {
		return nil
	}
	return r.ns.Close()
}

// Do runs f inside the namespace at path ("" for the caller's namespace).
func Do(path string, f func() error) error {
	r, err := New(path)
	if err != nil {
		return err
	}
	defer r.Close()
	return r.Do(f)
}
