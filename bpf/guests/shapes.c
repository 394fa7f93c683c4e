//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Test guest for the host frame: many exits, bpf-to-bpf subprograms, wide
 * (64-bit immediate) instructions, a bounded loop and bpf_loop. Byte 14 of
 * the frame (the first byte after the Ethernet header) selects the path;
 * every path returns a verdict the test can predict from the input.
 */
#include <xdp_hostd.h>

#define MAGIC 0x1122334455667788ULL

static __noinline int sub_verdict(__u8 sel)
{
	if (sel == 1)
		return XDP_DROP;
	if (sel == 2)
		return XDP_TX;
	return XDP_PASS;
}

static __noinline int sub_nested(__u8 sel)
{
	return sub_verdict(sel) == XDP_DROP ? XDP_ABORTED : XDP_DROP;
}

static long count_cb(__u32 i, __u64 *sum)
{
	*sum += i;
	return 0;
}

SEC("xdp")
int shapes(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *p = data;
	volatile __u64 wide = MAGIC;
	__u64 sum = 0;
	__u8 sel;

	if (p + 16 > (__u8 *)data_end)
		return XDP_ABORTED;          /* exit 1 */
	sel = p[14];
	switch (sel) {
	case 0:
		return XDP_PASS;             /* exit 2 */
	case 1:
	case 2:
	case 3:
		return sub_verdict(sel);     /* exits through a subprogram */
	case 4:
		return sub_nested(1);        /* nested subprograms: ABORTED */
	case 5:
		if (wide == MAGIC)           /* wide instruction */
			return XDP_TX;
		return XDP_PASS;
	case 6:
		for (int i = 0; i < 16; i++) /* bounded loop */
			sum += p[i & 15] ? 1 : 0;
		return sum > 100 ? XDP_PASS : XDP_DROP;
	case 7:
		bpf_loop(10, count_cb, &sum, 0); /* 0+1+...+9 = 45 */
		return sum == 45 ? XDP_TX : XDP_ABORTED;
	case 8:
		return 77;                   /* not an XDP action: invalid */
	case 9:
		return XDP_REDIRECT;         /* a redirect naming no port: invalid */
	default:
		return XDP_DROP;             /* last exit */
	}
}

char __license[] SEC("license") = "Dual BSD/GPL";
