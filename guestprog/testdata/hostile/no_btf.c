//go:build ignore
/* Hostile corpus: compiled without -g, so without BTF (see build.sh). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp") int prog(struct xdp_md *ctx) { return XDP_PASS; }
char __license[] SEC("license") = "GPL";
