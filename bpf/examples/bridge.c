//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * A learning bridge across the VM's port table.
 *
 * Every frame teaches the bridge where its source MAC lives: the port whose
 * device is the frame's ingress device (found by looking the ingress
 * ifindex up in port_table, and cached). A frame for a MAC learned behind
 * another port goes there; a frame for a MAC learned behind its own ingress
 * port stays on that segment (dropped); broadcast, multicast and unknown
 * destinations are flooded to every port but the ingress.
 *
 * The bridge's tables are its own maps: fdb (MAC -> port) and the ifindex ->
 * port cache.
 */
#include <linux/if_ether.h>
#include <xdp_hostd.h>

struct mac_key {
	__u8 addr[ETH_ALEN];
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct mac_key);
	__type(value, __u32); /* port */
	__uint(max_entries, 4096);
} fdb SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);   /* ifindex */
	__type(value, __u32); /* port */
	__uint(max_entries, XDP_HOSTD_MAX_PORTS);
} ingress_port SEC(".maps");

#define NO_PORT 0xffffffff

struct find_ctx {
	__u32 ifindex;
	__u32 port;
};

static long find_port(__u32 i, struct find_ctx *f)
{
	__u32 *ifindex = bpf_map_lookup_elem(&port_table, &i);

	if (ifindex && *ifindex == f->ifindex) {
		f->port = i;
		return 1; /* stop */
	}
	return 0;
}

static __always_inline __u32 port_of(__u32 ifindex)
{
	struct find_ctx f = { .ifindex = ifindex, .port = NO_PORT };
	__u32 *cached = bpf_map_lookup_elem(&ingress_port, &ifindex);

	if (cached)
		return *cached;
	bpf_loop(XDP_HOSTD_MAX_PORTS, find_port, &f, 0);
	if (f.port != NO_PORT)
		bpf_map_update_elem(&ingress_port, &ifindex, &f.port, BPF_ANY);
	return f.port;
}

SEC("xdp")
int bridge(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct mac_key src = {}, dst = {};
	__u32 in, *out;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	in = port_of(ctx->ingress_ifindex);
	if (in != NO_PORT && !(eth->h_source[0] & 1)) {
		__builtin_memcpy(src.addr, eth->h_source, ETH_ALEN);
		bpf_map_update_elem(&fdb, &src, &in, BPF_ANY);
	}
	if (eth->h_dest[0] & 1) /* broadcast or multicast */
		return xdp_hostd_broadcast();
	__builtin_memcpy(dst.addr, eth->h_dest, ETH_ALEN);
	out = bpf_map_lookup_elem(&fdb, &dst);
	if (!out)
		return xdp_hostd_broadcast();
	if (*out == in)
		return XDP_DROP; /* already on its segment */
	return xdp_hostd_redirect_port(*out);
}

char __license[] SEC("license") = "Dual BSD/GPL";
