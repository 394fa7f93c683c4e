//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * dispatch: the root XDP program of an uplink.
 *
 * A packet belongs to a VM when it arrived on an RX queue dedicated to that VM,
 * or else when its destination MAC is one of the VM's. Packets of a VM are
 * handed to the VM's program with a tail call into vm_progs[slot]; everything
 * else goes to the host stack untouched (XDP_PASS). The VM program ends in the
 * host epilogue (vmprog.c), which owns the verdict.
 */
#include "hostd.h"

/* RX queue -> VM slot + 1 (0: the queue is not dedicated). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, HOSTD_MAX_QUEUES);
} queue_slot SEC(".maps");

/* Destination MAC -> VM slot: a direct-mapped cache in front of mac_slot.
 * Entry mac_index(MAC) holds that MAC and its slot + 1 (0: empty); MACs
 * that collide are only in mac_slot. The host keeps both. */
#define MAC_CACHE_BITS 12

struct mac_cache_entry {
	__u8 addr[ETH_ALEN];
	__u16 slot1;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct mac_cache_entry);
	__uint(max_entries, 1 << MAC_CACHE_BITS);
} mac_cache SEC(".maps");

/* Must match macIndex in hostnet. */
static __always_inline __u32 mac_index(const __u8 *a)
{
	__u32 lo = (__u32)a[2] << 24 | (__u32)a[3] << 16 | (__u32)a[4] << 8 | a[5];
	__u32 hi = (__u32)a[0] << 8 | a[1];

	return ((lo ^ hi) * 0x9E3779B1u) >> (32 - MAC_CACHE_BITS);
}

/* Destination MAC -> VM slot, every VM's MAC. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct hostd_mac);
	__type(value, __u32);
	__uint(max_entries, HOSTD_MAX_MACS);
} mac_slot SEC(".maps");

/* VM slot -> the VM's program (guest program or the built-in one). */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, HOSTD_MAX_VMS);
} vm_progs SEC(".maps");

/* A VM's own packets are counted by its epilogue, per verdict; the
 * dispatcher counts only what no VM program sees. */
enum dispatch_counter {
	DISPATCH_HOST,       /* not a VM's packet: passed to the host stack */
	DISPATCH_NO_PROGRAM, /* a VM's packet, but its slot had no program: dropped */
	DISPATCH_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct hostd_count);
	__uint(max_entries, DISPATCH_MAX);
} dispatch_stats SEC(".maps");

static __always_inline void count(__u32 what, __u64 bytes)
{
	struct hostd_count *c = bpf_map_lookup_elem(&dispatch_stats, &what);

	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

SEC("xdp")
int dispatch(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
	__u32 queue = ctx->rx_queue_index;
	__u32 slot, *v;

	v = bpf_map_lookup_elem(&queue_slot, &queue);
	if (v && *v) {
		slot = *v - 1;
	} else {
		struct ethhdr *eth = data;
		struct mac_cache_entry *ce;
		struct hostd_mac key = {};
		__u32 idx;

		if ((void *)(eth + 1) > data_end)
			goto host;
		idx = mac_index(eth->h_dest);
		ce = bpf_map_lookup_elem(&mac_cache, &idx);
		if (ce && ce->slot1 &&
		    *(__u32 *)ce->addr == *(__u32 *)eth->h_dest &&
		    *(__u16 *)(ce->addr + 4) == *(__u16 *)(eth->h_dest + 4)) {
			slot = ce->slot1 - 1;
		} else {
			__builtin_memcpy(key.addr, eth->h_dest, ETH_ALEN);
			v = bpf_map_lookup_elem(&mac_slot, &key);
			if (!v)
				goto host;
			slot = *v;
		}
	}

	bpf_tail_call(ctx, &vm_progs, slot);
	/* The VM is registered but has no program in its slot (it is being set
	 * up or torn down). Its packets must not leak to the host stack. */
	count(DISPATCH_NO_PROGRAM, len);
	return XDP_DROP;

host:
	count(DISPATCH_HOST, len);
	return XDP_PASS;
}

char __license[] SEC("license") = "Dual BSD/GPL";
