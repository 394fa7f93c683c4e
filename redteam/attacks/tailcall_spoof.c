//go:build ignore
/* Attack: spoof in a program of the guest's own program array, reached by a
 * tail call, and leave through port 0. */
#include "spoof.h"

int stage(struct xdp_md *ctx);

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(max_entries, 1);
	__array(values, int(void *));
} stages SEC(".maps") = {
	.values = { [0] = (void *)&stage },
};

SEC("xdp")
int stage(struct xdp_md *ctx)
{
	struct ethhdr *eth = (void *)(long)ctx->data;

	if ((void *)(eth + 1) > (void *)(long)ctx->data_end || !write_source(eth))
		return XDP_PASS;
	return xdp_hostd_redirect_port(XDP_HOSTD_PORT_UPLINK);
}

SEC("xdp")
int prog(struct xdp_md *ctx)
{
	bpf_tail_call(ctx, &stages, 0);
	return XDP_PASS;
}
char __license[] SEC("license") = "GPL";
