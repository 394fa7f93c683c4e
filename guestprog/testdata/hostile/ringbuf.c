//go:build ignore
/* Hostile corpus: breaks one rule of the static policy. */
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <xdp_hostd.h>

struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096); } events SEC(".maps");
SEC("xdp") int prog(struct xdp_md *ctx) { __u32 v = 1; bpf_ringbuf_output(&events, &v, sizeof(v), 0); return XDP_PASS; }
char __license[] SEC("license") = "GPL";
