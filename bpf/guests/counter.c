//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* A guest program with state: it counts the frames it sees in a map and in
 * a global variable (.bss), and delivers them all. Tests use it to show that
 * what a program stored survives a daemon restart. */
#include <xdp_hostd.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} totals SEC(".maps");

__u64 seen;

SEC("xdp")
int counter(struct xdp_md *ctx)
{
	__u32 key = 0;
	__u64 *n = bpf_map_lookup_elem(&totals, &key);

	if (n)
		__sync_fetch_and_add(n, 1);
	__sync_fetch_and_add(&seen, 1);
	return XDP_PASS;
}

char __license[] SEC("license") = "Dual BSD/GPL";
