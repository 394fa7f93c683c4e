/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * xdp_hostd.h - the guest ABI of xdp-hostd.
 *
 * A VM owner writes an ordinary XDP program, includes this header and compiles
 * it with `clang -O2 -g -target bpf` (BTF is required). The host runs it on
 * the VM's dedicated uplink RX queue(s) and owns the verdict:
 *
 *   XDP_PASS      deliver the packet to this VM (tap or vhost-user)
 *   XDP_DROP      drop it
 *   XDP_TX        send it back out of the uplink it came from
 *   XDP_REDIRECT  send it to a port of this VM's port table, chosen with
 *                 bpf_redirect_map(&port_table, port, 0) (or the helpers below)
 *   anything else dropped and counted as aborted/invalid
 *
 * port_table is the only map a guest may redirect into. The host rebinds the
 * declaration below to the VM's real table when it loads the program. Port 0
 * is the uplink; other ports exist only when the host operator added them to
 * this VM's table. A redirect to a port that is not in the table returns the
 * low bits of the flags argument (XDP_ABORTED for 0): the packet is dropped and
 * counted.
 */
#ifndef XDP_HOSTD_H
#define XDP_HOSTD_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define XDP_HOSTD_ABI_VERSION 1

/* Port numbers of a VM's port table. */
#define XDP_HOSTD_PORT_UPLINK 0
#define XDP_HOSTD_MAX_PORTS 64

/* The VM's port table. Keys are port numbers, values ifindexes owned by the
 * host. A program can only look ports up and redirect to them: the kernel
 * does not let BPF programs update device maps. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, XDP_HOSTD_MAX_PORTS);
} port_table SEC(".maps");

/* Redirect to one port of the VM's table; returns XDP_REDIRECT, or
 * XDP_ABORTED if the port is not in the table (the host drops the packet and
 * counts it under "aborted"). */
static __always_inline long xdp_hostd_redirect_port(__u32 port)
{
	return bpf_redirect_map(&port_table, port, 0);
}

/* Send to every port of the VM's table except the one the packet came in on. */
static __always_inline long xdp_hostd_broadcast(void)
{
	return bpf_redirect_map(&port_table, 0, BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS);
}

#endif /* XDP_HOSTD_H */
