//go:build ignore
/* Attack: another VM's source MAC, out with XDP_TX. */
#include "spoof.h"

SEC("xdp")
int prog(struct xdp_md *ctx)
{
	struct ethhdr *eth = (void *)(long)ctx->data;

	if ((void *)(eth + 1) > (void *)(long)ctx->data_end || !write_source(eth))
		return XDP_PASS;
	return XDP_TX;
}
char __license[] SEC("license") = "GPL";
