/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * xdp_hostd.h - the guest ABI of xdp-hostd, version 2.
 *
 * A VM owner writes an ordinary XDP program, includes this header and compiles
 * it with `clang -O2 -g -target bpf` (BTF is required). The host runs it on
 * the VM's dedicated uplink RX queue(s) and owns the verdict: the program's
 * return value is a request, and the host carries it out.
 *
 *   XDP_PASS                     deliver the packet to this VM (tap or vhost-user)
 *   XDP_DROP                     drop it
 *   XDP_TX                       send it back out of the uplink it came from; its
 *                                source MAC must be the VM's, else it is dropped
 *                                and counted as spoofed
 *   xdp_hostd_redirect_port(n)   send it to port n of this VM's port table
 *                                (port 0 is the uplink: the source MAC rule of
 *                                XDP_TX applies)
 *   xdp_hostd_broadcast()        send it to every port of the table but the
 *                                uplink it came in on
 *   anything else                dropped and counted (aborted, invalid, no_port)
 *
 * A program never redirects by itself: bpf_redirect, bpf_redirect_map and the
 * other redirect helpers are refused. The kernel's redirect state is per CPU
 * and shared with whatever ran before, so only a redirect the host issues, to
 * a port of this VM's table, is trusted. A plain `return XDP_REDIRECT` names
 * no port: it is dropped and counted as invalid.
 *
 * ABI version 1 (port_table declared here, bpf_redirect_map called by the
 * program) is gone: objects that use port_table are refused with a message
 * to rebuild against this header; version 1 objects that never touch it
 * (PASS/DROP/TX only) load as before.
 */
#ifndef XDP_HOSTD_H
#define XDP_HOSTD_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define XDP_HOSTD_ABI_VERSION 2

/* Port numbers of a VM's port table: 0 is the uplink; other ports exist only
 * when the host operator added them to this VM's table. */
#define XDP_HOSTD_PORT_UPLINK 0
#define XDP_HOSTD_MAX_PORTS 64

/* Verdicts beyond the XDP actions: the host decodes them. */
#define XDP_HOSTD_VERDICT_PORT 0x100 /* + port number, 0 .. XDP_HOSTD_MAX_PORTS-1 */
#define XDP_HOSTD_VERDICT_BROADCAST 0x200

/* Send the packet to one port of the VM's table. A port that is not in the
 * table drops the packet (counted as no_port). */
static __always_inline int xdp_hostd_redirect_port(__u32 port)
{
	if (port >= XDP_HOSTD_MAX_PORTS)
		return XDP_ABORTED;
	return XDP_HOSTD_VERDICT_PORT + (int)port;
}

/* Send the packet to every port of the VM's table except the uplink it came
 * in on. */
static __always_inline int xdp_hostd_broadcast(void)
{
	return XDP_HOSTD_VERDICT_BROADCAST;
}

#endif /* XDP_HOSTD_H */
