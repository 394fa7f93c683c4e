package vmtests

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/vmtests/image"
)

// skip skips tb with msg, or fails it when XDP_HOSTD_REQUIRE_VM_TESTS=1 or
// XDP_HOSTD_REQUIRE_ROOT_TESTS=1 (set by make test and CI).
func skip(tb testing.TB, msg string) {
	tb.Helper()
	for _, v := range []string{"XDP_HOSTD_REQUIRE_VM_TESTS", "XDP_HOSTD_REQUIRE_ROOT_TESTS"} {
		if os.Getenv(v) == "1" {
			tb.Fatal(msg + " (" + v + "=1 makes this a failure)")
		}
	}
	tb.Skip(msg)
}

// qemuCommand is XDP_HOSTD_VMTEST_QEMU split into words.
func qemuCommand() []string {
	if s := strings.Fields(os.Getenv("XDP_HOSTD_VMTEST_QEMU")); len(s) > 0 {
		return s
	}
	return []string{"qemu-system-x86_64"}
}

// SkipWithoutQEMU skips tb when the QEMU binary is missing, and in -short
// mode (VM tests boot a guest: seconds each).
func SkipWithoutQEMU(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("boots a VM: skipped in -short mode")
	}
	q := qemuCommand()[0]
	if _, err := exec.LookPath(q); err != nil {
		skip(tb, fmt.Sprintf("VM tests need %s: apt-get install qemu-system-x86 (or set XDP_HOSTD_VMTEST_QEMU)", q))
	}
}

// SkipWithoutTestpmd skips tb when dpdk-testpmd is missing.
func SkipWithoutTestpmd(tb testing.TB) {
	tb.Helper()
	if _, err := exec.LookPath("dpdk-testpmd"); err != nil {
		skip(tb, "this test needs DPDK's testpmd as a vhost-user backend: apt-get install dpdk-dev")
	}
	if os.Geteuid() != 0 {
		skip(tb, "testpmd needs root here: run the VM tests as root")
	}
}

var (
	imageOnce sync.Once
	imageVal  *image.Image
	imageErr  error
)

// Image returns the default guest image, building it once per test binary
// (minutes on first use on a machine: it downloads Debian packages). It
// skips tb when the image cannot be built here.
func Image(tb testing.TB) *image.Image {
	tb.Helper()
	imageOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		start := time.Now()
		imageVal, imageErr = image.Build(ctx, image.Config{Logf: func(f string, a ...any) {
			fmt.Fprintf(os.Stderr, "vmtests/image: "+f+"\n", a...)
		}})
		if imageErr == nil {
			tb.Logf("guest image %s ready in %v (kernel %s)", imageVal.Key, time.Since(start).Round(time.Millisecond), imageVal.KernelRelease)
		}
	})
	if errors.Is(imageErr, image.ErrUnavailable) {
		skip(tb, fmt.Sprintf("cannot build the VM test image (needs apt-get download of linux-image-cloud-amd64 and busybox-static, dpkg, go): %v", imageErr))
	}
	if imageErr != nil {
		tb.Fatalf("build VM test image: %v", imageErr)
	}
	img := *imageVal
	if k := os.Getenv("XDP_HOSTD_VMTEST_KERNEL"); k != "" {
		if _, err := os.Stat(k); err != nil {
			tb.Fatalf("XDP_HOSTD_VMTEST_KERNEL: %v", err)
		}
		img.Kernel = k
	}
	return &img
}

// TempSocketPath returns a path for a unix socket named name in a fresh
// directory removed when tb ends. The directory is short (unix socket paths
// are limited to 107 bytes; t.TempDir can be longer).
func TempSocketPath(tb testing.TB, name string) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "vmt-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, name)
}
