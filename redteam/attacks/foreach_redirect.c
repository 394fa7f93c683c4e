//go:build ignore
/* Attack: broadcast_miss, from a bpf_for_each_map_elem callback. */
#include "abi1.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} target SEC(".maps");

static long poison(void *map, __u32 *key, __u32 *ifindex, void *unused)
{
	bpf_redirect_map(&port_table, *ifindex, BPF_F_BROADCAST);
	bpf_redirect_map(&port_table, 0xfffffff, 0);
	return 1;
}

SEC("xdp")
int prog(struct xdp_md *ctx)
{
	bpf_for_each_map_elem(&target, poison, 0, 0);
	return XDP_REDIRECT;
}
char __license[] SEC("license") = "GPL";
