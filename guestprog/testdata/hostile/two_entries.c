//go:build ignore
/* Hostile corpus: breaks one rule of the static policy. */
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <xdp_hostd.h>

SEC("xdp") int one(struct xdp_md *ctx) { return XDP_PASS; }
SEC("xdp") int two(struct xdp_md *ctx) { return XDP_DROP; }
char __license[] SEC("license") = "GPL";
