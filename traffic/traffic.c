//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * BPF programs of package traffic (test and benchmark tooling, not the
 * dataplane):
 *
 *   - xh_live_tx: XDP, returns XDP_TX. Run with BPF_PROG_RUN in live-frames
 *     mode on the wire veth, it transmits every frame into the veth's peer.
 *   - xh_rxq_count: XDP, counts frames per RX queue (per CPU), split into
 *     marked frames (built by package traffic; dropped) and others (passed).
 *   - xh_set_txq: tc egress, sets skb->queue_mapping from txq_set (an
 *     experiment on how the kernel picks a TX queue).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define XH_MAX_QUEUES 64
#define XH_MARKER_MAGIC 0x58484d4b /* "XHMK", see frame.go */
#define XH_MARKER_OFF (14 + 20 + 8)

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("xdp")
int xh_live_tx(struct xdp_md *ctx)
{
	return XDP_TX;
}

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, XH_MAX_QUEUES);
} rxq_marked SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, XH_MAX_QUEUES);
} rxq_other SEC(".maps");

static __always_inline int is_marked(void *data, void *end)
{
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	__u32 *magic = data + XH_MARKER_OFF;

	if ((void *)(magic + 1) > end)
		return 0;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
		return 0;
	return *magic == bpf_htonl(XH_MARKER_MAGIC);
}

SEC("xdp")
int xh_rxq_count(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 q = ctx->rx_queue_index;
	int marked = is_marked(data, end);
	__u64 *n;

	if (q >= XH_MAX_QUEUES)
		q = XH_MAX_QUEUES - 1;
	n = bpf_map_lookup_elem(marked ? (void *)&rxq_marked : (void *)&rxq_other, &q);
	if (n)
		(*n)++;
	return marked ? XDP_DROP : XDP_PASS;
}

/* Key 0: the value written into skb->queue_mapping; 0xffffffff: leave it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} txq_set SEC(".maps");

SEC("tc")
int xh_set_txq(struct __sk_buff *skb)
{
	__u32 key = 0;
	__u32 *v = bpf_map_lookup_elem(&txq_set, &key);

	if (v && *v != 0xffffffff)
		skb->queue_mapping = *v;
	return -1; /* TC_ACT_UNSPEC / TCX_NEXT */
}
