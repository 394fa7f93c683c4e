//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * A DDoS drop filter: IPv4 packets from a blocked source prefix are dropped
 * (and counted per prefix); everything else is delivered to the VM.
 *
 * blocked is a longest-prefix-match trie of the prefixes to drop. Neither
 * the guest agent nor the daemon's API reads or writes guest maps yet: the
 * host fills it through the program's pinned map (pin_dir/<uplink>/guest-*).
 */
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <xdp_hostd.h>

struct prefix {
	__u32 prefixlen;
	__u32 addr; /* network byte order */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct prefix);
	__type(value, __u64); /* packets dropped */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
} blocked SEC(".maps");

SEC("xdp")
int ddos_filter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct prefix key = { .prefixlen = 32 };
	__u64 *hits;

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	key.addr = ip->saddr;
	hits = bpf_map_lookup_elem(&blocked, &key);
	if (!hits)
		return XDP_PASS;
	__sync_fetch_and_add(hits, 1);
	return XDP_DROP;
}

char __license[] SEC("license") = "Dual BSD/GPL";
