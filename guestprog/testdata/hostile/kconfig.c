//go:build ignore
/* Hostile corpus: breaks one rule of the static policy (host-state): __kconfig
 * externs would be filled from the host's kernel version and configuration. */
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <xdp_hostd.h>

extern int LINUX_KERNEL_VERSION __kconfig;
extern _Bool CONFIG_BPF_JIT_ALWAYS_ON __kconfig;

SEC("xdp") int prog(struct xdp_md *ctx) {
	if (LINUX_KERNEL_VERSION > 0x060000 && CONFIG_BPF_JIT_ALWAYS_ON)
		return XDP_DROP;
	return XDP_PASS;
}
char __license[] SEC("license") = "GPL";
