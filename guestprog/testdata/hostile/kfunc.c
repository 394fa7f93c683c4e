//go:build ignore
/* Hostile corpus: breaks one rule of the static policy. */
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <xdp_hostd.h>

extern int bpf_xdp_metadata_rx_timestamp(const struct xdp_md *ctx, __u64 *timestamp) __ksym;
SEC("xdp") int prog(struct xdp_md *ctx) { __u64 ts = 0; bpf_xdp_metadata_rx_timestamp(ctx, &ts); return ts ? XDP_PASS : XDP_DROP; }
char __license[] SEC("license") = "GPL";
