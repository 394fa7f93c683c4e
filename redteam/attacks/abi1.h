/* The port table as version 1 of xdp_hostd.h declared it, for attacks that
 * need it. Version 2 objects have no such map. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 64);
} port_table SEC(".maps");
