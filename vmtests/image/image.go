// Package image builds the boot image of VM test guests from Debian
// packages and caches it between runs.
//
// An image is a kernel (vmlinuz from Debian's linux-image-cloud-amd64,
// resolved to the versioned package it depends on) and an initramfs (newc
// cpio, gzip) holding busybox (from busybox-static), the virtio modules for
// virtio-net-pci and virtio-serial with their dependencies, loaded in
// dependency order by /init, and the static in-guest test program
// (vmtests/guest, built with CGO_ENABLED=0 GOOS=linux).
//
// Packages are fetched with `apt-get download` and unpacked with `dpkg -x`,
// so a clean Debian machine builds the image on the first test run. The
// cache (Config.CacheDir, default $XDP_HOSTD_VMTEST_CACHE or
// ~/.cache/xdp-hostd/vmtests) keeps the unpacked kernel per package version
// and one initramfs per key (package versions, module list, /init, the guest
// program's hash); it is locked while building, so concurrent test binaries
// share it. Errors that mean "cannot fetch packages here" wrap ErrUnavailable:
// tests skip on them.
package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// ErrUnavailable is wrapped by errors that mean the image cannot be built on
// this machine (no apt, no package index, no network to the mirror, no go).
var ErrUnavailable = errors.New("VM test image unavailable")

// DefaultKernelPackage is the Debian meta package whose kernel guests boot.
const DefaultKernelPackage = "linux-image-cloud-amd64"

// DefaultModules are the modules loaded in the guest (their dependencies are
// added): virtio-net-pci and virtio-serial over virtio-pci.
var DefaultModules = []string{"virtio_pci", "virtio_net", "virtio_console"}

// formatVersion changes whenever the layout of the image changes without a
// change in its inputs.
const formatVersion = "3"

// Config says what to build. The zero value is the default image.
type Config struct {
	// CacheDir holds downloads and images. Empty: DefaultCacheDir().
	CacheDir string
	// KernelPackage is a Debian kernel package, a meta package (resolved
	// to the linux-image-* package it depends on) or a versioned one.
	// Empty: DefaultKernelPackage.
	KernelPackage string
	// Modules to load at boot, by name; dependencies are added and the
	// order is computed. Nil: DefaultModules. Built-in modules are skipped.
	Modules []string
	// GuestBinary is a prebuilt static guest program. Empty: build
	// vmtests/guest with the go command.
	GuestBinary string
	// Logf, if set, receives progress (downloads, builds).
	Logf func(format string, args ...any)
}

// Image is a bootable guest image. Its files live in the cache; do not
// modify them.
type Image struct {
	Kernel        string   // vmlinuz
	Initramfs     string   // gzip'd newc cpio
	KernelRelease string   // uname -r of the guest, e.g. 6.1.0-56-cloud-amd64
	Packages      []string // name=version of every Debian package used
	Modules       []string // module names in load order
	Key           string   // cache key of the initramfs
}

// DefaultCacheDir is $XDP_HOSTD_VMTEST_CACHE, else ~/.cache/xdp-hostd/vmtests
// (the user cache dir), else a directory under os.TempDir.
func DefaultCacheDir() string {
	if d := os.Getenv("XDP_HOSTD_VMTEST_CACHE"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "xdp-hostd", "vmtests")
	}
	return filepath.Join(os.TempDir(), "xdp-hostd-vmtests")
}

// Build returns the image for cfg, building what the cache lacks.
func Build(ctx context.Context, cfg Config) (*Image, error) {
	if cfg.CacheDir == "" {
		cfg.CacheDir = DefaultCacheDir()
	}
	if cfg.KernelPackage == "" {
		cfg.KernelPackage = DefaultKernelPackage
	}
	if cfg.Modules == nil {
		cfg.Modules = DefaultModules
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if err := os.MkdirAll(cfg.CacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("cache dir: %w", err)
	}
	unlock, err := lock(ctx, filepath.Join(cfg.CacheDir, "lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()

	// The guest program first: it needs no network.
	guest, err := guestProgram(ctx, cfg)
	if err != nil {
		return nil, err
	}
	guestSum := sha256.Sum256(guest)
	// xdp-hostd's guest agent, as a VM owner would install it.
	agent, err := buildStatic(ctx, "github.com/xdp-hostd/xdp-hostd/cmd/xdp-hostd-agent")
	if err != nil {
		return nil, err
	}
	guestSum = sha256.Sum256(append(guestSum[:], agent...))

	kpkg, err := resolve(ctx, cfg.KernelPackage, true)
	if err != nil {
		return nil, err
	}
	bpkg, err := resolve(ctx, "busybox-static", false)
	if err != nil {
		return nil, err
	}
	kdir, err := unpacked(ctx, cfg, kpkg)
	if err != nil {
		return nil, err
	}
	bdir, err := unpacked(ctx, cfg, bpkg)
	if err != nil {
		return nil, err
	}
	img := &Image{Packages: []string{kpkg.String(), bpkg.String()}}

	kernels, _ := filepath.Glob(filepath.Join(kdir, "boot", "vmlinuz-*"))
	if len(kernels) != 1 {
		return nil, fmt.Errorf("package %s: want one boot/vmlinuz-*, found %v", kpkg, kernels)
	}
	img.Kernel = kernels[0]
	img.KernelRelease = strings.TrimPrefix(filepath.Base(img.Kernel), "vmlinuz-")
	moddir := filepath.Join(kdir, "lib", "modules", img.KernelRelease)
	mods, err := resolveModules(moddir, cfg.Modules)
	if err != nil {
		return nil, fmt.Errorf("package %s: %w", kpkg, err)
	}
	for _, m := range mods {
		img.Modules = append(img.Modules, m.Name)
	}
	busybox, err := os.ReadFile(filepath.Join(bdir, "bin", "busybox"))
	if err != nil {
		return nil, fmt.Errorf("package %s: %w", bpkg, err)
	}
	initScript := initScript(mods)

	h := sha256.New()
	fmt.Fprintf(h, "format %s\nkernel %s\nbusybox %s\nmodules %v\ninit %s\nguest %x\n",
		formatVersion, kpkg, bpkg, img.Modules, initScript, guestSum)
	img.Key = hex.EncodeToString(h.Sum(nil))[:20]
	dir := filepath.Join(cfg.CacheDir, "images", img.Key)
	img.Initramfs = filepath.Join(dir, "initramfs.cpio.gz")
	defer prune(cfg, kdir, bdir, dir)
	if _, err := os.Stat(img.Initramfs); err == nil {
		return img, nil
	}

	start := time.Now()
	var buf bytes.Buffer
	w := newCPIO(&buf)
	for _, d := range []string{"bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "etc", "root", "lib", "lib/modules"} {
		w.dir(d, 0o755)
	}
	w.chardev("dev/console", 0o600, 5, 1)
	w.chardev("dev/null", 0o666, 1, 3)
	w.file("init", 0o755, []byte(initScript))
	w.file("bin/busybox", 0o755, busybox)
	w.symlink("bin/sh", "busybox")
	w.file("bin/guest", 0o755, guest)
	w.file("bin/xdp-hostd-agent", 0o755, agent)
	w.file("etc/hostname", 0o644, []byte("vmtest\n"))
	for _, m := range mods {
		b, err := os.ReadFile(m.Path)
		if err != nil {
			return nil, err
		}
		w.file("lib/modules/"+m.Name+".ko", 0o644, b)
	}
	gz, err := w.close()
	if err != nil {
		return nil, fmt.Errorf("write initramfs: %w", err)
	}
	if err := writeAtomic(img.Initramfs, gz); err != nil {
		return nil, err
	}
	cfg.Logf("built initramfs %s (%d KiB, %d modules) in %v", img.Initramfs, len(gz)>>10, len(mods), time.Since(start).Round(time.Millisecond))
	return img, nil
}

// initScript is /init: mount, load modules in order, run the guest program,
// power off. The host sees all of it on the serial console.
func initScript(mods []module) string {
	var b strings.Builder
	b.WriteString(`#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t tmpfs tmpfs /tmp
hostname vmtest
exec </dev/console >/dev/console 2>&1
`)
	for _, m := range mods {
		fmt.Fprintf(&b, "insmod /lib/modules/%s.ko || echo \"init: insmod %s failed\"\n", m.Name, m.Name)
	}
	b.WriteString(`ip link set lo up
echo "init: modules loaded after $(cut -d' ' -f1 /proc/uptime)s, starting /bin/guest"
/bin/guest
echo "init: /bin/guest exited with status $?, powering off"
poweroff -f
`)
	return b.String()
}

// guestProgram returns the static guest binary, built unless configured.
func guestProgram(ctx context.Context, cfg Config) ([]byte, error) {
	if cfg.GuestBinary != "" {
		return os.ReadFile(cfg.GuestBinary)
	}
	return buildStatic(ctx, "github.com/xdp-hostd/xdp-hostd/vmtests/guest")
}

// buildStatic builds a static linux/amd64 binary of a package of the module.
func buildStatic(ctx context.Context, pkg string) ([]byte, error) {
	if _, err := exec.LookPath("go"); err != nil {
		return nil, fmt.Errorf("%w: building the guest program needs the go command: %v", ErrUnavailable, err)
	}
	tmp, err := os.MkdirTemp("", "vmtest-guest-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "bin")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w",
		"-o", out, pkg)
	cmd.Dir = sourceDir()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build %s (in %s): %v\n%s", pkg, cmd.Dir, err, b)
	}
	return os.ReadFile(out)
}

// sourceDir is a directory inside the module: this file's, or the working
// directory (tests run in their package's directory) when built -trimpath.
func sourceDir() string {
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		if _, err := os.Stat(file); err == nil {
			return filepath.Dir(file)
		}
	}
	return "."
}

func writeAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// pruneAge is how long unused packages and images stay in the cache.
const pruneAge = 30 * 24 * time.Hour

// prune marks the directories this build used as fresh and removes
// packages and images no build has used for pruneAge.
func prune(cfg Config, used ...string) {
	now := time.Now()
	for _, d := range used {
		os.Chtimes(d, now, now)
	}
	for _, sub := range []string{"pkgs", "images"} {
		entries, _ := os.ReadDir(filepath.Join(cfg.CacheDir, sub))
		for _, e := range entries {
			if fi, err := e.Info(); err == nil && e.IsDir() && now.Sub(fi.ModTime()) > pruneAge {
				cfg.Logf("pruning %s/%s, unused for %v", sub, e.Name(), now.Sub(fi.ModTime()).Round(time.Hour))
				os.RemoveAll(filepath.Join(cfg.CacheDir, sub, e.Name()))
			}
		}
	}
}

// lock takes an exclusive flock on path, polling until ctx ends.
func lock(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cache lock: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("cache lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("cache lock %s held by another process: %w", path, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
