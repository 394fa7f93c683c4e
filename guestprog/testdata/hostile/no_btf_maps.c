//go:build ignore
/* Hostile corpus: a map defined in .maps (which needs BTF), compiled without
 * -g: the object cannot even be parsed without BTF; still the btf-required
 * rule (exit 1), not unusable input. */
#include <xdp_hostd.h>

struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u32); __uint(max_entries, 1); } counts SEC(".maps");
SEC("xdp") int prog(struct xdp_md *ctx) { __u32 k = 0; return bpf_map_lookup_elem(&counts, &k) ? XDP_PASS : XDP_DROP; }
char __license[] SEC("license") = "GPL";
