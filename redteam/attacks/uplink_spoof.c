//go:build ignore
/* Attack: another VM's source MAC, out of port 0 (the uplink). */
#include "spoof.h"

SEC("xdp")
int prog(struct xdp_md *ctx)
{
	struct ethhdr *eth = (void *)(long)ctx->data;

	if ((void *)(eth + 1) > (void *)(long)ctx->data_end || !write_source(eth))
		return XDP_PASS;
	return xdp_hostd_redirect_port(XDP_HOSTD_PORT_UPLINK);
}
char __license[] SEC("license") = "GPL";
