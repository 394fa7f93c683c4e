//go:build ignore
/* Hostile corpus: breaks one rule of the static policy (memory-quota). A
 * bloom filter's bit array is entries x hash functions x 7/5 bits, rounded
 * up to a power of two: 64 MiB here, not the 15 MB of its values. */
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <xdp_hostd.h>

struct { __uint(type, BPF_MAP_TYPE_BLOOM_FILTER); __type(value, __u8); __uint(max_entries, 15000000); __uint(map_extra, 15); } seen SEC(".maps");
SEC("xdp") int prog(struct xdp_md *ctx) { __u8 v = 1; return bpf_map_peek_elem(&seen, &v) ? XDP_PASS : XDP_DROP; }
char __license[] SEC("license") = "GPL";
