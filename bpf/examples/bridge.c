//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * A learning bridge across the VM's port table.
 *
 * Every frame teaches the bridge where its source MAC lives: the port it
 * came in on, which for a VM's program is always the uplink (port 0: the
 * program runs on the VM's uplink queue). A frame for a MAC learned behind
 * another port goes there; a frame for a MAC learned behind its own ingress
 * port stays on that segment (dropped); broadcast, multicast and unknown
 * destinations are flooded to every port but the ingress.
 *
 * The bridge's table is its own map: fdb (MAC -> port).
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

SEC("xdp")
int bridge(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct mac_key src = {}, dst = {};
	__u32 in = XDP_HOSTD_PORT_UPLINK, *out;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	if (!(eth->h_source[0] & 1)) {
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
