//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * vmprog: the host's frame around every VM program.
 *
 * The VM program in a VM's vm_progs slot is hostd_vm_tap or hostd_vm_xsk
 * below (by the VM's delivery mode), with the call to
 * hostd_guest_entry relinked at load time to the entry function of the VM's
 * program (a guest's, or the built-in one in guests/pass.c). The guest's entry
 * function becomes a bpf-to-bpf subprogram, so every way it can end — any
 * exit instruction, and the exit of any program it tail-calls into from its own
 * program array — returns into the frame, which hands the verdict to
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
 * the compiler cannot fold its return value into the frames. */
__attribute__((noinline, weak)) int hostd_guest_entry(struct xdp_md *ctx)
{
	/* Not reached: the loader refuses a VM program whose entry was not
	 * relinked. An invalid action would make such a mistake visible. */
	return -1;
}

enum hostd_delivery {
	HOSTD_DELIVER_TAP, /* copy into the VM's tap (devmap) */
	HOSTD_DELIVER_XSK, /* into the VM's AF_XDP socket on this queue */
};

/* The host epilogue: the only place that decides what a VM's verdict does.
 * It is inlined into one frame program per delivery mode, so the choice of
 * mode costs nothing per packet. */
static __always_inline int hostd_epilogue(struct xdp_md *ctx, int verdict, enum hostd_delivery mode)
{
	__u64 len = (__u64)ctx->data_end - (__u64)ctx->data;
	struct hostd_count *c;
	__u32 slot;
	int ret;

	switch (verdict) {
	case XDP_PASS:
		if (mode == HOSTD_DELIVER_XSK)
			ret = bpf_redirect_map(&hostd_xsks, ctx->rx_queue_index, 0);
		else
			ret = bpf_redirect_map(&hostd_tap, 0, 0);
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

/* The frame of a VM delivering into a tap. */
SEC("xdp")
int hostd_vm_tap(struct xdp_md *ctx)
{
	return hostd_epilogue(ctx, hostd_guest_entry(ctx), HOSTD_DELIVER_TAP);
}

/* The frame of a VM delivering into AF_XDP sockets (vhost-user). */
SEC("xdp")
int hostd_vm_xsk(struct xdp_md *ctx)
{
	return hostd_epilogue(ctx, hostd_guest_entry(ctx), HOSTD_DELIVER_XSK);
}

char __license[] SEC("license") = "Dual BSD/GPL";
