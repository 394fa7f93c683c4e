package traffic

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// inNS runs f on a locked OS thread inside the network namespace at path
// ("" runs f in the caller's namespace). Several kernel interfaces resolve
// an ifindex or a device name in the calling thread's namespace (AF_XDP
// bind, XDP attach, BPF_PROG_RUN's ingress_ifindex, SIOCGIFINDEX). If the
// thread cannot be moved back it stays locked, so the runtime retires it
// when f's goroutine ends and no other goroutine runs in the wrong
// namespace.
func inNS(path string, f func() error) error {
	if path == "" {
		return f()
	}
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", path, err)
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		return fmt.Errorf("return from network namespace %s: %w (after: %v)", path, err, ferr)
	}
	runtime.UnlockOSThread()
	return ferr
}
