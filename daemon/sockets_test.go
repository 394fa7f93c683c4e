package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Socket paths are judged after their directories' symbolic links are
// resolved: a link inside an allowed directory cannot lead out, and an
// allowed directory given through a link (as /var/run for /run) works.
func TestSocketPathResolution(t *testing.T) {
	root := t.TempDir()
	allowed := filepath.Join(root, "run", "vms")
	outside := filepath.Join(root, "etc")
	for _, d := range []string{allowed, outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink(outside, filepath.Join(allowed, "out"))
	os.Symlink(filepath.Join(root, "run"), filepath.Join(root, "varrun"))    // as /var/run -> /run
	os.Symlink(filepath.Join(allowed, "a"), filepath.Join(allowed, "final")) // the socket itself a link

	for _, tc := range []struct {
		dirs []string
		path string
		ok   bool
	}{
		{[]string{allowed}, filepath.Join(allowed, "vm.sock"), true},
		{[]string{allowed}, filepath.Join(allowed, "new", "sub", "vm.sock"), true}, // created later
		{[]string{allowed}, filepath.Join(allowed, "out", "vm.sock"), false},
		{[]string{allowed}, filepath.Join(outside, "vm.sock"), false},
		{[]string{allowed}, allowed, false}, // the directory itself
		{[]string{allowed}, allowed + "x/vm.sock", false},
		{[]string{filepath.Join(root, "varrun", "vms")}, filepath.Join(allowed, "vm.sock"), true},
		{[]string{allowed}, filepath.Join(root, "varrun", "vms", "vm.sock"), true},
		{[]string{filepath.Join(root, "varrun", "vms")}, filepath.Join(root, "varrun", "vms", "out", "x.sock"), false},
	} {
		r, err := resolveSocketPath(tc.path)
		if err != nil {
			t.Errorf("%s: %v", tc.path, err)
			continue
		}
		if got := socketAllowed(r, tc.dirs); got != tc.ok {
			t.Errorf("%s (resolved %s) in %v: %v, want %v", tc.path, r, tc.dirs, got, tc.ok)
		}
	}
	// The socket's own name is not followed: claimSocket finds the link
	// there and refuses it as not a socket.
	if r, _ := resolveSocketPath(filepath.Join(allowed, "final")); r != filepath.Join(allowed, "final") {
		t.Errorf("the final link was followed: %s", r)
	}
	for _, p := range []string{"/run/x/../y.sock", "a/../../b"} {
		if !hasDotDot(p) {
			t.Errorf("%s: '..' not seen", p)
		}
	}
	if hasDotDot("/run/x..y/z.sock") {
		t.Error("'x..y' is not '..'")
	}
	if err := (&Config{VMSocketDirs: []string{"/"}, Uplinks: []UplinkConfig{{Name: "eth0"}}}).Validate(); err == nil || !strings.Contains(err.Error(), "vm_socket_dirs[0]") {
		t.Errorf("vm_socket_dirs [\"/\"]: %v", err)
	}
	c := &Config{Uplinks: []UplinkConfig{{Name: "eth0", VMs: []VMConfig{{Name: "a", MAC: "52:54:00:00:00:01", AgentSocket: "/tmp/a.sock"}}}}}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "agent_socket: /tmp/a.sock is outside") {
		t.Errorf("an agent socket in /tmp with the default directories: %v", err)
	}
}
