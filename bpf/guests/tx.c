//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Test guest: bounce every packet back out of the uplink it came from. */
#include <xdp_hostd.h>

SEC("xdp")
int tx(struct xdp_md *ctx)
{
	return XDP_TX;
}

char __license[] SEC("license") = "Dual BSD/GPL";
