/* Shared by the spoofing attacks: the MAC to pretend to be, set by the
 * attacker (another VM's, or the host's). */
#include <linux/if_ether.h>
#include <xdp_hostd.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} victim SEC(".maps");

static __always_inline int write_source(struct ethhdr *eth)
{
	__u32 zero = 0;
	__u64 *mac = bpf_map_lookup_elem(&victim, &zero);

	if (!mac)
		return 0;
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	return 1;
}
