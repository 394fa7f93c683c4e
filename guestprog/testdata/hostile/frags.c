//go:build ignore
/* Hostile corpus: breaks one rule of the static policy. */
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <xdp_hostd.h>

SEC("xdp.frags") int prog(struct xdp_md *ctx) { return XDP_PASS; }
char __license[] SEC("license") = "GPL";
