//go:build ignore
/* Attack: forge verdicts. Returns whatever the attacker put in the map:
 * a bare XDP_REDIRECT, out-of-range port verdicts, ports not in the table,
 * values next to the broadcast code, negative values. */
#include <xdp_hostd.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __s32);
	__uint(max_entries, 1);
} verdict SEC(".maps");

SEC("xdp")
int prog(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__s32 *v = bpf_map_lookup_elem(&verdict, &zero);

	return v ? *v : XDP_PASS;
}
char __license[] SEC("license") = "GPL";
