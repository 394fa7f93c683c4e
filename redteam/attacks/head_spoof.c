//go:build ignore
/* Attack: grow the frame at the front and write a whole new Ethernet header
 * with another source MAC, then XDP_TX: the check must read the frame as it
 * leaves, not as it came. */
#include "spoof.h"

SEC("xdp")
int prog(struct xdp_md *ctx)
{
	struct ethhdr *eth, *old;

	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct ethhdr)))
		return XDP_PASS;
	eth = (void *)(long)ctx->data;
	old = eth + 1;
	if ((void *)(old + 1) > (void *)(long)ctx->data_end)
		return XDP_PASS;
	__builtin_memcpy(eth->h_dest, old->h_source, ETH_ALEN);
	eth->h_proto = old->h_proto;
	if (!write_source(eth))
		return XDP_PASS;
	return XDP_TX;
}
char __license[] SEC("license") = "GPL";
