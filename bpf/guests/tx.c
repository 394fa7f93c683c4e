//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Test guest: bounce every packet back out of the uplink it came from, as a
 * reflector does: the addresses swapped, so that the frame leaves with the
 * VM's own MAC (the one it was sent to) as its source. */
#include <linux/if_ether.h>
#include <xdp_hostd.h>

SEC("xdp")
int tx(struct xdp_md *ctx)
{
	struct ethhdr *eth = (void *)(long)ctx->data;
	__u8 tmp[ETH_ALEN];

	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return XDP_DROP;
	__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
	return XDP_TX;
}

char __license[] SEC("license") = "Dual BSD/GPL";
