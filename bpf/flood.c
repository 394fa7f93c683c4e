//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * flood: tc ingress program on the uplink (after XDP_PASS).
 *
 * Broadcast and multicast frames the NIC puts on a shared queue are not any
 * one VM's: the dispatcher passes them to the host stack, and this program
 * clones each of them into every tap VM's tap (as a bridge would flood
 * them), so that ARP requests and the like reach the VMs. Frames on a
 * dedicated queue never get here: they went to their VM by XDP.
 * vhost-user VMs get their copies from the daemon (package vmport).
 */
#include "hostd.h"
#include <linux/pkt_cls.h>

#define HOSTD_MAX_FLOOD 64

/* Tap ifindexes, packed from index 0; 0 ends the list. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, HOSTD_MAX_FLOOD);
} flood_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct hostd_count);
	__uint(max_entries, 1);
} flood_stats SEC(".maps");

SEC("tc")
int flood(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct hostd_count *c;
	__u32 i, zero = 0;

	if ((void *)(eth + 1) > data_end || !(eth->h_dest[0] & 1))
		return TC_ACT_OK;
	for (i = 0; i < HOSTD_MAX_FLOOD; i++) {
		/* The key is a copy: the counter stays in a register, where the
		 * verifier can see the loop end. */
		__u32 key = i;
		__u32 *ifindex = bpf_map_lookup_elem(&flood_ports, &key);

		if (!ifindex || !*ifindex)
			break;
		if (bpf_clone_redirect(skb, *ifindex, 0) == 0) {
			c = bpf_map_lookup_elem(&flood_stats, &zero);
			if (c) {
				c->packets++;
				c->bytes += skb->len;
			}
		}
	}
	return TC_ACT_OK;
}

char __license[] SEC("license") = "Dual BSD/GPL";
