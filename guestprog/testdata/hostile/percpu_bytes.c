//go:build ignore
/* Hostile corpus: breaks one rule of the static policy (memory-quota). A
 * per-CPU array of 1-byte values looks like 1 MiB per CPU, but the kernel
 * rounds each value to 8 bytes, allocates it for every possible CPU (not
 * only those the daemon runs on) and adds a pointer per entry. */
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <xdp_hostd.h>

struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __type(key, __u32); __type(value, __u8); __uint(max_entries, 1 << 20); } bytes SEC(".maps");
SEC("xdp") int prog(struct xdp_md *ctx) { __u32 k = 0; return bpf_map_lookup_elem(&bytes, &k) ? XDP_PASS : XDP_DROP; }
char __license[] SEC("license") = "GPL";
