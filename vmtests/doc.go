// Package vmtests boots real QEMU guests for tests, in the style of
// hugelgupf/vmtest: StartT(t, options…) starts a VM whose guest runs the
// test program of vmtests/guest and returns once that program has sent its
// ready event over virtio-serial; vm.Do sends it a command (package vmproto)
// and waits for the typed result. NICs are vhost-user virtio-net-pci devices
// served by a backend of the test's choice (ours, or DPDK testpmd through
// StartTestpmd).
//
// Live migration: WithQMP gives a VM a QMP socket (package qmp) and
// WithIncoming starts a destination QEMU (-incoming) that StartT returns
// without waiting for a ready event; once QMP migrate completed, the
// destination's VM answers the guest's commands (TestLiveMigrationQMP).
//
// The guest image (Debian cloud kernel, busybox, virtio modules, the guest
// program) is built and cached by package vmtests/image on first use.
//
// Every wait is bounded: boot (WithBootTimeout), each command (its Budget,
// at least WithCommandTimeout) and the VM's whole life (WithTimeout). QEMU is
// killed by its pid when the test ends. The QEMU command line is logged for
// reproduction and the serial console is logged line by line with the VM's
// name as prefix.
//
// VM tests skip in -short mode. They skip, naming the fix, when QEMU, testpmd or the Debian packages are
// not available, unless XDP_HOSTD_REQUIRE_VM_TESTS=1, which makes that a
// failure (for CI machines that ran `make deps`).
//
// # Environment
//
//   - XDP_HOSTD_VMTEST_QEMU: the QEMU command, split on spaces (default
//     "qemu-system-x86_64"); extra words are passed first, e.g.
//     "qemu-system-x86_64 -d guest_errors".
//   - XDP_HOSTD_VMTEST_KERNEL: a kernel (bzImage) to boot instead of the
//     Debian one; the initramfs still carries the Debian package's modules,
//     so that kernel needs virtio built in or the same release.
//   - XDP_HOSTD_VMTEST_TIMEOUT: the longest a VM may live, as a Go duration
//     (default 3m); QEMU is killed and the test fails when it passes.
//   - XDP_HOSTD_VMTEST_ACCEL: QEMU accelerator (default "tcg"; "kvm" where
//     /dev/kvm works: on the shared build machines /dev/kvm exists but a
//     KVM guest hung before its first console line, so TCG stays default).
//   - XDP_HOSTD_VMTEST_CACHE: the image cache (default
//     ~/.cache/xdp-hostd/vmtests).
//   - XDP_HOSTD_REQUIRE_VM_TESTS=1: fail instead of skipping.
//
// # Machine notes (QEMU 7.2, TCG)
//
// vhost-user needs guest memory the backend can map: shared memfd memory is
// on by default (WithSharedMemory). QEMU 7.2 under TCG segfaults in
// vhost_net_start when virtio-net-pci uses MSI-X, so NICs get vectors=0.
// A guest is ready about 3 s (no NIC) to 6 s (vhost-user NIC, testpmd
// busy-polling one of two cores) after QEMU starts. QEMU before 9.0 loses
// guest stores under TCG while it live-migrates (upstream 03bfc2188f): a
// guest that is migrated takes WithMigratableTCGMemory, or its destination
// may get stale pages.
package vmtests
