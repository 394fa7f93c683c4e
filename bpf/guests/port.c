//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Test guest: a UDP packet to destination port 9000+N is redirected to port N
 * of the VM's port table, a UDP packet to port 8999 is broadcast to every
 * port of the table but the one it came in on; everything else is passed to
 * the VM.
 */
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <xdp_hostd.h>

#define PORT_BASE 9000
#define PORT_BROADCAST 8999

SEC("xdp")
int port(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	__u16 dport;

	if ((void *)(udp + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	dport = bpf_ntohs(udp->dest);
	if (dport == PORT_BROADCAST)
		return xdp_hostd_broadcast();
	if (dport >= PORT_BASE && dport < PORT_BASE + XDP_HOSTD_MAX_PORTS)
		return xdp_hostd_redirect_port(dport - PORT_BASE);
	return XDP_PASS;
}

char __license[] SEC("license") = "Dual BSD/GPL";
