package hostnet

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

const bpffsMagic = 0xcafe4a11 // BPF_FS_MAGIC

func onBPFFS(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, err
	}
	return uint32(st.Type) == bpffsMagic, nil
}

// DefaultBPFFS is where the kernel's BPF filesystem is conventionally mounted.
const DefaultBPFFS = "/sys/fs/bpf"

// EnsureBPFFS makes sure dir is a directory on a BPF filesystem. If the
// nearest existing ancestor of dir is on bpffs, the missing directories are
// created. If not, a BPF filesystem is mounted (as Cilium's agent does) at
// /sys/fs/bpf when dir is under it, else at dir itself, and that is logged.
// mounted reports whether it mounted one.
func EnsureBPFFS(dir string) (mounted bool, err error) {
	dir = filepath.Clean(dir)
	fix := fmt.Sprintf("mount one with 'mount -t bpf bpf %s', or choose a directory on a BPF filesystem", DefaultBPFFS)
	anc := dir
	for {
		fi, err := os.Stat(anc)
		if err == nil {
			if !fi.IsDir() {
				return false, fmt.Errorf("%w: %s is not a directory, so no BPF filesystem can be there; %s", ErrBPFFSMissing, anc, fix)
			}
			break
		}
		if !errors.Is(err, os.ErrNotExist) || anc == "/" {
			return false, fmt.Errorf("%w: %s: %v; %s", ErrBPFFSMissing, anc, err, fix)
		}
		anc = filepath.Dir(anc)
	}
	ok, err := onBPFFS(anc)
	if err != nil {
		return false, fmt.Errorf("%w: statfs %s: %v; %s", ErrBPFFSMissing, anc, err, fix)
	}
	if !ok {
		mnt := dir
		if anc == DefaultBPFFS || dir == DefaultBPFFS {
			mnt = DefaultBPFFS
		} else if err := os.MkdirAll(dir, 0o700); err != nil {
			return false, fmt.Errorf("%w: cannot create %s to mount one there: %v; %s", ErrBPFFSMissing, dir, err, fix)
		}
		if err := unix.Mount("bpf", mnt, "bpf", 0, "mode=0700"); err != nil {
			return false, fmt.Errorf("%w: %s is not on a BPF filesystem and mounting one at %s failed: %v; %s", ErrBPFFSMissing, dir, mnt, err, fix)
		}
		slog.Info("mounted a BPF filesystem for pins", "path", mnt)
		mounted = true
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return mounted, fmt.Errorf("create %s: %w", dir, err)
	}
	return mounted, nil
}
