//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * A port forwarder: IPv4 UDP and TCP packets to a destination port listed in
 * forward go out of the port-table port it names (e.g. a service VM or an
 * appliance the operator added to this VM's table); everything else is
 * delivered to the VM.
 */
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <xdp_hostd.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);   /* destination port, host byte order */
	__type(value, __u32); /* port-table port */
	__uint(max_entries, 1024);
} forward SEC(".maps");

SEC("xdp")
int port_forward(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *l4;
	__u16 dport;
	__u32 *port;

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5)
		return XDP_PASS;
	if (ip->protocol != IPPROTO_UDP && ip->protocol != IPPROTO_TCP)
		return XDP_PASS;
	/* TCP and UDP both start with the source and destination ports. */
	l4 = (void *)(ip + 1);
	if ((void *)(l4 + 1) > data_end)
		return XDP_PASS;
	dport = bpf_ntohs(l4->dest);
	port = bpf_map_lookup_elem(&forward, &dport);
	if (!port)
		return XDP_PASS;
	return xdp_hostd_redirect_port(*port);
}

char __license[] SEC("license") = "Dual BSD/GPL";
