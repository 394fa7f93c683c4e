//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * vmprog: the host's frame around every VM program.
 *
 * The VM program in a VM's vm_progs slot is hostd_vm below, with the call to
 * hostd_guest_entry relinked at load time to the entry function of the VM's
 * program (a guest's, or the built-in one in guests/pass.c). The guest's entry
 * function becomes a bpf-to-bpf subprogram, so every way it can end — any
 * exit instruction, and the exit of any program it tail-calls into from its own
 * program array — returns into hostd_vm, which hands the verdict to
 * hostd_epilogue. There is no path from guest code to the end of the XDP
 * program that does not pass through the epilogue.
 *
 * The maps named hostd_* are per VM and owned by the host; the loader binds
 * them to the VM's instances, so they survive program replacement.
 */
#include "hostd.h"
/* Declares port_table, the guest ABI's map: the host creates each VM's table
 * from this declaration. */
#include "include/xdp_hostd.h"

/* Per-CPU packets and bytes per verdict of this VM. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct hostd_count);
	__uint(max_entries, HOSTD_V_MAX);
} hostd_counters SEC(".maps");

/* Delivery by copy into the VM's tap: key 0 -> the tap's ifindex. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} hostd_tap SEC(".maps");

/* Delivery into the VM's AF_XDP sockets: RX queue -> socket. */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, HOSTD_MAX_QUEUES);
} hostd_xsks SEC(".maps");

/* Replaced at load time by the VM program's entry function. Weak, so that
 * the compiler cannot fold its return value into hostd_vm. */
__attribute__((noinline, weak)) int hostd_guest_entry(struct xdp_md *ctx)
{
	/* Not reached: the loader refuses a VM program whose entry was not
	 * relinked. An invalid action would make such a mistake visible. */
	return -1;
}

static __always_inline int hostd_deliver(struct xdp_md *ctx)
{
	long ret;

	ret = bpf_redirect_map(&hostd_xsks, ctx->rx_queue_index, 0);
	if (ret == XDP_REDIRECT)
		return XDP_REDIRECT;
	return bpf_redirect_map(&hostd_tap, 0, 0);
}

/* The host epilogue: the only place that decides what a VM's verdict does.
 * Global, so the verifier checks it once, on its own. */
__attribute__((noinline)) int hostd_epilogue(struct xdp_md *ctx, int verdict)
{
	__u64 len = (__u64)ctx->data_end - (__u64)ctx->data;
	struct hostd_count *c;
	__u32 slot;
	int ret;

	switch (verdict) {
	case XDP_PASS:
		ret = hostd_deliver(ctx);
		slot = ret == XDP_REDIRECT ? HOSTD_V_PASS : HOSTD_V_UNDELIVERED;
		if (ret != XDP_REDIRECT)
			ret = XDP_DROP;
		break;
	case XDP_TX:
		slot = HOSTD_V_TX;
		ret = XDP_TX;
		break;
	case XDP_REDIRECT:
		/* The target was chosen by the program's bpf_redirect_map on
		 * its port table, the only redirect map it may use. */
		slot = HOSTD_V_REDIRECT;
		ret = XDP_REDIRECT;
		break;
	case XDP_DROP:
		slot = HOSTD_V_DROP;
		ret = XDP_DROP;
		break;
	case XDP_ABORTED:
		slot = HOSTD_V_ABORTED;
		ret = XDP_DROP;
		break;
	default:
		slot = HOSTD_V_INVALID;
		ret = XDP_DROP;
		break;
	}

	c = bpf_map_lookup_elem(&hostd_counters, &slot);
	if (c) {
		c->packets++;
		c->bytes += len;
	}
	return ret;
}

SEC("xdp")
int hostd_vm(struct xdp_md *ctx)
{
	return hostd_epilogue(ctx, hostd_guest_entry(ctx));
}

char __license[] SEC("license") = "Dual BSD/GPL";
