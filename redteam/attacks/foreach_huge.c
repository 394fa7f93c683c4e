//go:build ignore
/* Attack: walk a 1M-entry array on every packet. */
#include <xdp_hostd.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1 << 20);
} big SEC(".maps");

static long visit(void *map, __u32 *key, __u32 *val, __u64 *sum)
{
	*sum += *val;
	return 0;
}

SEC("xdp")
int prog(struct xdp_md *ctx)
{
	__u64 sum = 0;

	bpf_for_each_map_elem(&big, visit, &sum, 0);
	return sum == 1 ? XDP_DROP : XDP_PASS;
}
char __license[] SEC("license") = "GPL";
