//go:build ignore
/* Hostile corpus: breaks one rule of the static policy. */
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <xdp_hostd.h>

SEC("tc") int prog(struct __sk_buff *skb) { return 0; }
char __license[] SEC("license") = "GPL";
