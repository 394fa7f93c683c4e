//go:build ignore
/* Hostile corpus: breaks one rule of the static policy. */
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <xdp_hostd.h>

int prog(struct xdp_md *ctx);
struct { __uint(type, BPF_MAP_TYPE_PROG_ARRAY); __uint(key_size, 4); __uint(max_entries, 1); __array(values, int(void *)); } again SEC(".maps") = { .values = { [0] = (void *)&prog } };
SEC("xdp") int prog(struct xdp_md *ctx) { bpf_tail_call(ctx, &again, 0); return XDP_PASS; }
char __license[] SEC("license") = "GPL";
