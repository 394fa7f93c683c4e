//go:build ignore
/* Hostile corpus: breaks one rule of the static policy. */
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <xdp_hostd.h>

SEC("xdp") int prog(struct xdp_md *ctx) {
	struct bpf_fib_lookup p = {};
	p.family = 2;
	p.ifindex = ctx->ingress_ifindex;
	return bpf_fib_lookup(ctx, &p, sizeof(p), 0) == 0 ? XDP_PASS : XDP_DROP;
}
char __license[] SEC("license") = "GPL";
