/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Host-internal definitions shared by the host's BPF programs. Not guest ABI. */
#ifndef HOSTD_H
#define HOSTD_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

#define HOSTD_MAX_QUEUES 256
#define HOSTD_MAX_VMS 256
#define HOSTD_MAX_MACS 1024

/* Verdict counter slots of a VM. The first five are the XDP action codes. */
enum hostd_verdict {
	HOSTD_V_ABORTED = XDP_ABORTED,
	HOSTD_V_DROP = XDP_DROP,
	HOSTD_V_PASS = XDP_PASS, /* delivered to the VM */
	HOSTD_V_TX = XDP_TX,     /* sent back out of the uplink */
	HOSTD_V_REDIRECT = XDP_REDIRECT, /* sent to a port of the VM's table */
	HOSTD_V_INVALID,     /* unknown verdict, or XDP_REDIRECT naming no port */
	HOSTD_V_UNDELIVERED, /* PASS, but the VM had no tap or socket to take it */
	HOSTD_V_SPOOFED,     /* TX or a redirect to the uplink with a source MAC not the VM's */
	HOSTD_V_NO_PORT,     /* redirect to a port that is not in the VM's table */
	HOSTD_V_MAX,
};

struct hostd_count {
	__u64 packets;
	__u64 bytes;
};

/* A MAC address as a hash key, padded to 8 bytes. */
struct hostd_mac {
	__u8 addr[ETH_ALEN];
	__u16 pad;
};

static __always_inline int hostd_mac_equal(const __u8 *a, const __u8 *b)
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) |
		(a[3] ^ b[3]) | (a[4] ^ b[4]) | (a[5] ^ b[5])) == 0;
}

#endif /* HOSTD_H */
