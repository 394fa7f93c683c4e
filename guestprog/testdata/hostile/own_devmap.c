//go:build ignore
/* Hostile corpus: breaks one rule of the static policy. */
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <xdp_hostd.h>

struct { __uint(type, BPF_MAP_TYPE_DEVMAP); __type(key, __u32); __type(value, __u32); __uint(max_entries, 4); } my_ports SEC(".maps");
SEC("xdp") int prog(struct xdp_md *ctx) { return bpf_redirect_map(&my_ports, 1, 0); }
char __license[] SEC("license") = "GPL";
