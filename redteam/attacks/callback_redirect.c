//go:build ignore
/* Attack: broadcast_miss, with the redirect calls made from a bpf_loop
 * callback, where a policy that matches call patterns might not look. */
#include "abi1.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} target SEC(".maps");

static long poison(__u32 i, void *unused)
{
	__u32 zero = 0, *k = bpf_map_lookup_elem(&target, &zero);

	if (k) {
		bpf_redirect_map(&port_table, *k, BPF_F_BROADCAST);
		bpf_redirect_map(&port_table, 0xfffffff, 0);
	}
	return 1;
}

SEC("xdp")
int prog(struct xdp_md *ctx)
{
	bpf_loop(1, poison, 0, 0);
	return XDP_REDIRECT;
}
char __license[] SEC("license") = "GPL";
