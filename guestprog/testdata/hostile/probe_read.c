//go:build ignore
/* Hostile corpus: breaks one rule of the static policy. */
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <xdp_hostd.h>

SEC("xdp") int prog(struct xdp_md *ctx) { long v = 0; bpf_probe_read_kernel(&v, sizeof(v), (void *)0xffffffff81000000); return v ? XDP_DROP : XDP_PASS; }
char __license[] SEC("license") = "GPL";
