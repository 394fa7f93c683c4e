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
 * The guest's verdict is a request (bpf/include/xdp_hostd.h). The epilogue
 * alone calls bpf_redirect_map, on the VM's own maps, and returns
 * XDP_REDIRECT only when that call succeeded: the kernel's per-CPU redirect
 * state is then exactly what the host set, whatever the guest left there
 * (guest programs may not call redirect helpers at all; this holds even if
 * one did). Frames that leave through the uplink carry the VM's source MAC.
 *
 * The maps named hostd_* are per VM and owned by the host; the loader binds
 * them to the VM's instances, so they survive program replacement.
 */
#include "hostd.h"
#include "include/xdp_hostd.h"

/* Per-CPU packets and bytes per verdict of this VM. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, enum hostd_verdict);
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

/* The VM's port table: port number -> ifindex. Port 0 is the uplink. Only
 * the host writes it (BPF programs cannot update device maps). */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, XDP_HOSTD_MAX_PORTS);
} hostd_ports SEC(".maps");

/* The VM's identity: its MAC, the only source address its frames may carry
 * out of the uplink. */
struct hostd_vm_cfg {
	struct hostd_mac mac;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct hostd_vm_cfg);
	__uint(max_entries, 1);
} hostd_vm SEC(".maps");

/* Run-time cost of the VM's program: one packet in HOSTD_COST_SAMPLE is
 * timed (ktime before and after the guest's entry), so that measuring costs
 * about nothing per packet. */
#define HOSTD_COST_SAMPLE 64

struct hostd_run_cost {
	__u64 runs;    /* packets through the frame */
	__u64 sampled; /* packets timed */
	__u64 ns;      /* guest time of the timed packets */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct hostd_run_cost);
	__uint(max_entries, 1);
} hostd_cost SEC(".maps");

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

/* Whether the frame's source MAC is the VM's. */
static __always_inline int hostd_source_ok(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct hostd_vm_cfg *cfg;
	__u32 zero = 0;

	if ((void *)(eth + 1) > data_end)
		return 0;
	cfg = bpf_map_lookup_elem(&hostd_vm, &zero);
	return cfg && hostd_mac_equal(eth->h_source, cfg->mac.addr);
}

/* A redirect to one port of the VM's table, issued by the host. */
static __always_inline int hostd_to_port(struct xdp_md *ctx, __u32 port, enum hostd_verdict *slot)
{
	__u32 *ifindex = bpf_map_lookup_elem(&hostd_ports, &port);

	if (!ifindex) {
		*slot = HOSTD_V_NO_PORT;
		return XDP_DROP;
	}
	if (*ifindex == ctx->ingress_ifindex && !hostd_source_ok(ctx)) {
		*slot = HOSTD_V_SPOOFED;
		return XDP_DROP;
	}
	if (bpf_redirect_map(&hostd_ports, port, 0) != XDP_REDIRECT) {
		*slot = HOSTD_V_NO_PORT; /* removed since the lookup */
		return XDP_DROP;
	}
	*slot = HOSTD_V_REDIRECT;
	return XDP_REDIRECT;
}

/* The host epilogue: the only place that decides what a VM's verdict does.
 * It is inlined into one frame program per delivery mode, so the choice of
 * mode costs nothing per packet. */
static __always_inline int hostd_epilogue(struct xdp_md *ctx, int verdict, enum hostd_delivery mode)
{
	__u64 len = (__u64)ctx->data_end - (__u64)ctx->data;
	enum hostd_verdict slot;
	struct hostd_count *c;
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
		if (hostd_source_ok(ctx)) {
			slot = HOSTD_V_TX;
			ret = XDP_TX;
		} else {
			slot = HOSTD_V_SPOOFED;
			ret = XDP_DROP;
		}
		break;
	case XDP_DROP:
		slot = HOSTD_V_DROP;
		ret = XDP_DROP;
		break;
	case XDP_ABORTED:
		slot = HOSTD_V_ABORTED;
		ret = XDP_DROP;
		break;
	case XDP_HOSTD_VERDICT_BROADCAST:
		/* Every port but the one the frame came in on: never the
		 * uplink, so no source MAC rule. */
		ret = bpf_redirect_map(&hostd_ports, 0, BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS);
		slot = ret == XDP_REDIRECT ? HOSTD_V_REDIRECT : HOSTD_V_NO_PORT;
		if (ret != XDP_REDIRECT)
			ret = XDP_DROP;
		break;
	default:
		if (verdict >= XDP_HOSTD_VERDICT_PORT && verdict < XDP_HOSTD_VERDICT_PORT + XDP_HOSTD_MAX_PORTS) {
			ret = hostd_to_port(ctx, verdict - XDP_HOSTD_VERDICT_PORT, &slot);
			break;
		}
		/* Unknown, or a bare XDP_REDIRECT: whatever redirect state the
		 * program left behind is never used. */
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

/* Calls the guest and times one call in HOSTD_COST_SAMPLE. */
static __always_inline int hostd_frame(struct xdp_md *ctx, enum hostd_delivery mode)
{
	struct hostd_run_cost *cost;
	__u32 zero = 0;
	__u64 t0 = 0;
	int verdict;

	cost = bpf_map_lookup_elem(&hostd_cost, &zero);
	if (cost && (cost->runs++ % HOSTD_COST_SAMPLE) == 0)
		t0 = bpf_ktime_get_ns();
	verdict = hostd_guest_entry(ctx);
	if (cost && t0) {
		cost->ns += bpf_ktime_get_ns() - t0;
		cost->sampled++;
	}
	return hostd_epilogue(ctx, verdict, mode);
}

/* The frame of a VM delivering into a tap. */
SEC("xdp")
int hostd_vm_tap(struct xdp_md *ctx)
{
	return hostd_frame(ctx, HOSTD_DELIVER_TAP);
}

/* The frame of a VM delivering into AF_XDP sockets (vhost-user). */
SEC("xdp")
int hostd_vm_xsk(struct xdp_md *ctx)
{
	return hostd_frame(ctx, HOSTD_DELIVER_XSK);
}

char __license[] SEC("license") = "Dual BSD/GPL";
