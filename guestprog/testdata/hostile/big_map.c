//go:build ignore
/* Hostile corpus: breaks one rule of the static policy. */
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <xdp_hostd.h>

struct big { char b[1024]; };
struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, __u32); __type(value, struct big); __uint(max_entries, 1 << 20); } huge SEC(".maps");
SEC("xdp") int prog(struct xdp_md *ctx) { __u32 k = 0; return bpf_map_lookup_elem(&huge, &k) ? XDP_PASS : XDP_DROP; }
char __license[] SEC("license") = "GPL";
