//go:build ignore
/* Hostile corpus: breaks one rule of the static policy (memory-quota). A
 * hash of 1-byte keys and values: each element is a 48-byte header plus key
 * and value rounded to 8 bytes, preallocated with a spare per CPU, and the
 * buckets are a power of two: 27.6 MB in the kernel, not 15. */
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <xdp_hostd.h>

struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, __u8); __type(value, __u8); __uint(max_entries, 300000); } bytes SEC(".maps");
SEC("xdp") int prog(struct xdp_md *ctx) { __u8 k = 0; return bpf_map_lookup_elem(&bytes, &k) ? XDP_PASS : XDP_DROP; }
char __license[] SEC("license") = "GPL";
