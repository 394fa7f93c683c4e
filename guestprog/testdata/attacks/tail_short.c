//go:build ignore
/* Attack: shrink the frame below an Ethernet header, so that there is no
 * source MAC to check, then XDP_TX. */
#include <xdp_hostd.h>

SEC("xdp")
int prog(struct xdp_md *ctx)
{
	int len = (int)((long)ctx->data_end - (long)ctx->data);

	if (bpf_xdp_adjust_tail(ctx, 8 - len))
		return XDP_PASS;
	return XDP_TX;
}
char __license[] SEC("license") = "GPL";
