package daemon

import (
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// VM sockets get the owner, group and mode the configuration gives, by
// default libvirt's QEMU user and group where they exist (QEMU, run
// unprivileged by libvirt, must connect); bad values are refused with the
// field's name.
func TestSocketPerm(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		says string
	}{
		{Config{VMSocketOwner: "no-such-user-xh"}, "vm_socket_owner: no user"},
		{Config{VMSocketGroup: "no-such-group-xh"}, "vm_socket_group: no group"},
		{Config{VMSocketMode: "rw"}, "vm_socket_mode"},
		{Config{VMSocketMode: "0666"}, "any user"},
	} {
		tc.cfg.Uplinks = []UplinkConfig{{Name: "eth1"}}
		if err := tc.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%+v: %v, want an error saying %q", tc.cfg, err, tc.says)
		}
	}

	p, err := (&Config{VMSocketOwner: "0", VMSocketGroup: "0", VMSocketMode: "0640"}).socketPerm()
	if err != nil || p.uid != 0 || p.gid != 0 || p.mode != 0o640 {
		t.Errorf("numeric: %+v %v", p, err)
	}
	p, err = (&Config{}).socketPerm()
	if err != nil {
		t.Fatal(err)
	}
	want := -1
	if u, err := user.Lookup(DefaultQEMUUser); err == nil && os.Geteuid() == 0 {
		want, _ = strconv.Atoi(u.Uid)
	}
	if p.uid != want || p.mode != DefaultVMSocketMode {
		t.Errorf("default: uid %d mode %o, want uid %d (libvirt-qemu where it exists) mode 0660", p.uid, p.mode, want)
	}
	if os.Geteuid() != 0 {
		return
	}
	// Applied to a socket file.
	path := filepath.Join(t.TempDir(), "vm.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p = sockPerm{uid: 1, gid: 2, mode: 0o660}
	if err := p.apply(path); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Lstat(path)
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid != 1 || st.Gid != 2 || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket: uid %d gid %d mode %v", st.Uid, st.Gid, fi.Mode())
	}
}
