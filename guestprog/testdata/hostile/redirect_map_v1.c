//go:build ignore
/* Hostile corpus: a guest ABI version 1 program: it redirects itself through
 * port_table, which the host no longer allows. */
#include "../../../redteam/attacks/abi1.h"

SEC("xdp") int prog(struct xdp_md *ctx) { return bpf_redirect_map(&port_table, 1, 0); }
char __license[] SEC("license") = "GPL";
