//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Test guest: the entry program tail-calls into a program of its own program
 * array, which drops IPv4 and passes everything else. The verdict of the
 * tail-called program must still reach the host epilogue.
 */
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <xdp_hostd.h>

int stage2(struct xdp_md *ctx);

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(max_entries, 1);
	__array(values, int(void *));
} stages SEC(".maps") = {
	.values = { [0] = (void *)&stage2 },
};

SEC("xdp")
int stage2(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return XDP_ABORTED;
	return eth->h_proto == bpf_htons(ETH_P_IP) ? XDP_DROP : XDP_PASS;
}

SEC("xdp")
int entry(struct xdp_md *ctx)
{
	bpf_tail_call(ctx, &stages, 0);
	return XDP_ABORTED; /* stage missing */
}

char __license[] SEC("license") = "Dual BSD/GPL";
