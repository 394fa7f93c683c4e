//go:build ignore
/* Attack: shrink the frame to the bare Ethernet header (the kernel allows no
 * less), then XDP_TX: what little is left must still carry the VM's source
 * MAC. */
#include <linux/if_ether.h>
#include <xdp_hostd.h>

SEC("xdp")
int prog(struct xdp_md *ctx)
{
	int len = (int)((long)ctx->data_end - (long)ctx->data);

	if (bpf_xdp_adjust_tail(ctx, ETH_HLEN - len))
		return XDP_PASS;
	return XDP_TX;
}
char __license[] SEC("license") = "GPL";
