//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * vm_tx: XDP program on the host side of VM taps (guest -> host).
 *
 * A frame the VM writes into its tap is "received" by the tap device and runs
 * this program first. A frame whose source MAC is not the VM's own is dropped
 * and counted (anti-spoof); a good frame goes out of the VM's uplink with one
 * redirect, never touching the host stack.
 */
#include "hostd.h"

struct tap_cfg {
	struct hostd_mac mac; /* the only source MAC this VM may send from */
	__u32 slot;
	__u32 pad;
};

/* Tap ifindex -> its VM's identity. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct tap_cfg);
	__uint(max_entries, HOSTD_MAX_VMS);
} tap_cfg SEC(".maps");

/* Tap ifindex -> the uplink its VM sends out of. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, HOSTD_MAX_VMS);
} tap_uplink SEC(".maps");

enum vmtx_counter {
	VMTX_SENT,     /* redirected to the uplink */
	VMTX_SPOOFED,  /* source MAC was not the VM's: dropped */
	VMTX_INVALID,  /* shorter than an Ethernet header: dropped */
	VMTX_UNKNOWN,  /* tap not registered (being set up or torn down): dropped */
	VMTX_NO_UPLINK, /* redirect failed: dropped */
	VMTX_MAX,
};

/* Per-CPU counters per VM slot: slot * VMTX_MAX + counter. Frames from taps
 * that are not registered are counted under slot HOSTD_MAX_VMS. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct hostd_count);
	__uint(max_entries, (HOSTD_MAX_VMS + 1) * VMTX_MAX);
} vmtx_stats SEC(".maps");

static __always_inline void count(__u32 slot, __u32 what, __u64 bytes)
{
	__u32 key = slot * VMTX_MAX + what;
	struct hostd_count *c = bpf_map_lookup_elem(&vmtx_stats, &key);

	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

SEC("xdp")
int vm_tx(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 ifindex = ctx->ingress_ifindex;
	__u64 len = data_end - data;
	struct ethhdr *eth = data;
	struct tap_cfg *cfg;
	long ret;

	cfg = bpf_map_lookup_elem(&tap_cfg, &ifindex);
	if (!cfg) {
		count(HOSTD_MAX_VMS, VMTX_UNKNOWN, len);
		return XDP_DROP;
	}
	if ((void *)(eth + 1) > data_end) {
		count(cfg->slot, VMTX_INVALID, len);
		return XDP_DROP;
	}
	if (!hostd_mac_equal(eth->h_source, cfg->mac.addr)) {
		count(cfg->slot, VMTX_SPOOFED, len);
		return XDP_DROP;
	}
	ret = bpf_redirect_map(&tap_uplink, ifindex, 0);
	if (ret != XDP_REDIRECT) {
		count(cfg->slot, VMTX_NO_UPLINK, len);
		return XDP_DROP;
	}
	count(cfg->slot, VMTX_SENT, len);
	return XDP_REDIRECT;
}

char __license[] SEC("license") = "Dual BSD/GPL";
