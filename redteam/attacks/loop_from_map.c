//go:build ignore
/* Attack: a bpf_loop whose count comes from a map (up to 8M per call). */
#include <xdp_hostd.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} count SEC(".maps");

static long spin(__u32 i, __u64 *sum)
{
	*sum += i;
	return 0;
}

SEC("xdp")
int prog(struct xdp_md *ctx)
{
	__u32 zero = 0, *n = bpf_map_lookup_elem(&count, &zero);
	__u64 sum = 0;

	if (n)
		bpf_loop(*n, spin, &sum, 0);
	return sum == 1 ? XDP_DROP : XDP_PASS;
}
char __license[] SEC("license") = "GPL";
