//go:build ignore
/* Attack: a loop of backward jumps (not unrolled) of 50000 iterations. The
 * static model cannot bound it; the kernel verifier walks every iteration,
 * and its count is over the budget at load. */
#include <xdp_hostd.h>

SEC("xdp")
int prog(struct xdp_md *ctx)
{
	__u64 sum = 0;

#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < 50000; i++)
		sum += i ^ (sum >> 3);
	return sum == 1 ? XDP_DROP : XDP_PASS;
}
char __license[] SEC("license") = "GPL";
