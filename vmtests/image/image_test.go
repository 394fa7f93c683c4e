package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/internal/testenv"
)

func TestCPIOListsWithCpioTool(t *testing.T) {
	var buf bytes.Buffer
	w := newCPIO(&buf)
	w.dir("bin", 0o755)
	w.file("bin/hello", 0o755, []byte("hi\n"))
	w.symlink("bin/sh", "hello")
	w.chardev("dev/console", 0o600, 5, 1)
	gz, err := w.close()
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(raw, []byte("070701")) || !bytes.Contains(raw, []byte("TRAILER!!!")) || len(raw)%4 != 0 {
		t.Fatalf("not a newc archive: %q…", raw[:min(len(raw), 120)])
	}
	testenv.RequireTool(t, "cpio", "the archive is cross-checked with it: apt-get install cpio")
	cmd := exec.Command("cpio", "-it", "--quiet")
	cmd.Stdin = bytes.NewReader(raw)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -it: %v\n%s", err, out)
	}
	if got, want := strings.Fields(string(out)), []string{"bin", "bin/hello", "bin/sh", "dev/console"}; !slices.Equal(got, want) {
		t.Fatalf("cpio lists %v, want %v", got, want)
	}
}

// TestBuild builds (or finds in the cache) the real image: it downloads
// Debian packages on first use.
func TestBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("downloads Debian packages and builds the guest program")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	img, err := Build(ctx, Config{Logf: t.Logf})
	if errors.Is(err, ErrUnavailable) {
		t.Skipf("cannot build the VM test image here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("image %s: kernel %s (%s), modules %v, packages %v", img.Key, img.Kernel, img.KernelRelease, img.Modules, img.Packages)
	for _, f := range []string{img.Kernel, img.Initramfs} {
		if _, err := os.Stat(f); err != nil {
			t.Fatal(err)
		}
	}
	idx := func(m string) int { return slices.Index(img.Modules, m) }
	for _, m := range []string{"virtio_net", "virtio_console", "virtio_pci", "virtio", "virtio_ring", "net_failover", "failover"} {
		if idx(m) < 0 {
			t.Errorf("module %s missing from %v", m, img.Modules)
		}
	}
	for _, before := range [][2]string{{"failover", "net_failover"}, {"net_failover", "virtio_net"}, {"virtio", "virtio_pci"}, {"virtio_ring", "virtio_net"}} {
		if idx(before[0]) > idx(before[1]) {
			t.Errorf("%s loads after %s: %v", before[0], before[1], img.Modules)
		}
	}
	// A second build is a cache hit with the same key.
	again, err := Build(ctx, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if again.Key != img.Key || again.Initramfs != img.Initramfs {
		t.Fatalf("second build: key %s, want %s", again.Key, img.Key)
	}
}

func TestResolveModulesFromModulesDep(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"kernel/a/virtio_net.ko", "kernel/a/net_failover.ko", "kernel/b/failover.ko", "kernel/c/virtio_ring.ko", "kernel/c/virtio.ko", "kernel/c/x-y.ko"} {
		p := dir + "/" + f
		if err := os.MkdirAll(p[:strings.LastIndex(p, "/")], 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dep := `kernel/a/virtio_net.ko: kernel/a/net_failover.ko kernel/b/failover.ko kernel/c/virtio_ring.ko kernel/c/virtio.ko
kernel/a/net_failover.ko: kernel/b/failover.ko
kernel/b/failover.ko:
kernel/c/virtio.ko: kernel/c/virtio_ring.ko
kernel/c/virtio_ring.ko:
kernel/c/x-y.ko: kernel/c/virtio.ko kernel/c/virtio_ring.ko
`
	os.WriteFile(dir+"/modules.dep", []byte(dep), 0o644)
	os.WriteFile(dir+"/modules.builtin", []byte("kernel/z/virtio_console.ko\n"), 0o644)
	mods, err := resolveModules(dir, []string{"x_y", "virtio_net", "virtio_console"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range mods {
		names = append(names, m.Name)
	}
	want := []string{"virtio_ring", "virtio", "x_y", "failover", "net_failover", "virtio_net"}
	if !slices.Equal(names, want) {
		t.Fatalf("load order %v, want %v", names, want)
	}
	if _, err := resolveModules(dir, []string{"nosuch"}); err == nil {
		t.Fatal("missing module accepted")
	}
}
