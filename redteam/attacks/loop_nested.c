//go:build ignore
/* Attack: bpf_loop of 8M iterations inside bpf_loop of 8M: constant counts,
 * about 2^46 iterations per packet. */
#include <xdp_hostd.h>

static long inner(__u32 i, __u64 *sum)
{
	*sum += i;
	return 0;
}

static long outer(__u32 i, __u64 *sum)
{
	bpf_loop(1 << 23, inner, sum, 0);
	return 0;
}

SEC("xdp")
int prog(struct xdp_md *ctx)
{
	__u64 sum = 0;

	bpf_loop(1 << 23, outer, &sum, 0);
	return sum == 1 ? XDP_DROP : XDP_PASS;
}
char __license[] SEC("license") = "GPL";
