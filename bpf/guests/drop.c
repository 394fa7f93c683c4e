//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The fail-closed VM program: drop everything. A VM whose guest program
 * cannot be restored after a restart (its stored object is missing or
 * damaged, and no running copy was left on the pins) runs it until its
 * owner loads a program again. */
#include <xdp_hostd.h>

SEC("xdp")
int drop(struct xdp_md *ctx)
{
	return XDP_DROP;
}

char __license[] SEC("license") = "Dual BSD/GPL";
