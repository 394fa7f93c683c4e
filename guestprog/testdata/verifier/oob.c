//go:build ignore
/* Passes the static policy, fails the kernel verifier: reads the packet
 * without a bounds check. */
#include <xdp_hostd.h>

SEC("xdp")
int oob(struct xdp_md *ctx)
{
	unsigned char *p = (void *)(long)ctx->data;

	return p[100] == 1 ? XDP_DROP : XDP_PASS;
}

char __license[] SEC("license") = "GPL";
