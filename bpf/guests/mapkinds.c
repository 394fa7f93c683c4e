//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* A guest program with one map of each kind whose contents move with a
 * VM in a live migration: it counts frames per CPU and per source address
 * (hash, LRU hash and their per-CPU variants), keeps the last sources in
 * a queue and a stack, and delivers every frame. Tests migrate it. */
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <xdp_hostd.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} frames_pc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 64);
} by_src SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 64);
} by_src_lru SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 64);
} by_src_pc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 64);
} by_src_lru_pc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__type(value, __u32);
	__uint(max_entries, 4);
} recent_q SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK);
	__type(value, __u32);
	__uint(max_entries, 4);
} recent_s SEC(".maps");

static __always_inline void count(void *map, __u32 *key)
{
	__u64 one = 1, *n = bpf_map_lookup_elem(map, key);

	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(map, key, &one, BPF_NOEXIST);
}

SEC("xdp")
int mapkinds(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	__u32 zero = 0, src;
	__u64 *n;

	n = bpf_map_lookup_elem(&frames_pc, &zero);
	if (n)
		*n += 1;
	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	src = ip->saddr;
	count(&by_src, &src);
	count(&by_src_lru, &src);
	count(&by_src_pc, &src);
	count(&by_src_lru_pc, &src);
	bpf_map_push_elem(&recent_q, &src, BPF_EXIST);
	bpf_map_push_elem(&recent_s, &src, BPF_EXIST);
	return XDP_PASS;
}

char __license[] SEC("license") = "Dual BSD/GPL";
