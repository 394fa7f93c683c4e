//go:build ignore
/* Attack: a program of its own array tail-calls itself up to the kernel's
 * limit (33), each run a bpf_loop of 4096. */
#include <xdp_hostd.h>

int again(struct xdp_md *ctx);

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(max_entries, 1);
	__array(values, int(void *));
} chain SEC(".maps") = {
	.values = { [0] = (void *)&again },
};

static long spin(__u32 i, __u64 *sum)
{
	*sum += i * i;
	*sum ^= *sum >> 3;
	*sum += i;
	*sum ^= *sum << 7;
	return 0;
}

SEC("xdp")
int again(struct xdp_md *ctx)
{
	__u64 sum = 0;

	bpf_loop(4096, spin, &sum, 0);
	bpf_tail_call(ctx, &chain, 0);
	return sum == 1 ? XDP_DROP : XDP_PASS;
}

SEC("xdp")
int prog(struct xdp_md *ctx)
{
	bpf_tail_call(ctx, &chain, 0);
	return XDP_PASS;
}
char __license[] SEC("license") = "GPL";
