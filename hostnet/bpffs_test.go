package hostnet_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
)

func isBPFFS(t *testing.T, path string) bool {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatalf("statfs %s: %v", path, err)
	}
	return uint32(st.Type) == unix.BPF_FS_MAGIC
}

func TestEnsureBPFFSMounts(t *testing.T) {
	testnet.RequireRoot(t)
	dir := t.TempDir()
	// Registered after TempDir's cleanup, so it runs before it.
	t.Cleanup(func() {
		if isBPFFS(t, dir) {
			if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
				t.Errorf("unmount %s: %v", dir, err)
			}
		}
	})

	mounted, err := hostnet.EnsureBPFFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !mounted || !isBPFFS(t, dir) {
		t.Fatalf("mounted=%v, on bpffs=%v", mounted, isBPFFS(t, dir))
	}
	// Already there: nothing to do.
	if mounted, err := hostnet.EnsureBPFFS(dir); err != nil || mounted {
		t.Errorf("second call: mounted=%v, %v", mounted, err)
	}
	// Missing directories below a bpffs are created, not mounted.
	sub := filepath.Join(dir, "xdp-hostd", "uplink0")
	if mounted, err := hostnet.EnsureBPFFS(sub); err != nil || mounted {
		t.Errorf("%s: mounted=%v, %v", sub, mounted, err)
	}
	if fi, err := os.Stat(sub); err != nil || !fi.IsDir() || !isBPFFS(t, sub) {
		t.Errorf("%s: %v %v", sub, fi, err)
	}
}

func TestEnsureBPFFSRegularFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pins")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{file, filepath.Join(file, "below")} {
		mounted, err := hostnet.EnsureBPFFS(p)
		if !errors.Is(err, hostnet.ErrBPFFSMissing) || mounted {
			t.Fatalf("%s: mounted=%v, err %v; want ErrBPFFSMissing", p, mounted, err)
		}
		if !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), "mount -t bpf bpf /sys/fs/bpf") {
			t.Errorf("error %q should name %s and the fix", err, file)
		}
	}
}
