//go:build ignore
/* Hostile corpus: breaks one rule of the static policy (program-limit):
 * 80 tail-call stages and an entry, more programs than an object may have.
 * Each program costs the kernel pages of memory whatever its size. */
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <xdp_hostd.h>

#define STAGE(i) SEC("xdp") int stage##i(struct xdp_md *ctx) { return XDP_PASS; }
STAGE(0)
STAGE(1)
STAGE(2)
STAGE(3)
STAGE(4)
STAGE(5)
STAGE(6)
STAGE(7)
STAGE(8)
STAGE(9)
STAGE(10)
STAGE(11)
STAGE(12)
STAGE(13)
STAGE(14)
STAGE(15)
STAGE(16)
STAGE(17)
STAGE(18)
STAGE(19)
STAGE(20)
STAGE(21)
STAGE(22)
STAGE(23)
STAGE(24)
STAGE(25)
STAGE(26)
STAGE(27)
STAGE(28)
STAGE(29)
STAGE(30)
STAGE(31)
STAGE(32)
STAGE(33)
STAGE(34)
STAGE(35)
STAGE(36)
STAGE(37)
STAGE(38)
STAGE(39)
STAGE(40)
STAGE(41)
STAGE(42)
STAGE(43)
STAGE(44)
STAGE(45)
STAGE(46)
STAGE(47)
STAGE(48)
STAGE(49)
STAGE(50)
STAGE(51)
STAGE(52)
STAGE(53)
STAGE(54)
STAGE(55)
STAGE(56)
STAGE(57)
STAGE(58)
STAGE(59)
STAGE(60)
STAGE(61)
STAGE(62)
STAGE(63)
STAGE(64)
STAGE(65)
STAGE(66)
STAGE(67)
STAGE(68)
STAGE(69)
STAGE(70)
STAGE(71)
STAGE(72)
STAGE(73)
STAGE(74)
STAGE(75)
STAGE(76)
STAGE(77)
STAGE(78)
STAGE(79)

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(max_entries, 80);
	__array(values, int(void *));
} stages SEC(".maps") = {
	.values = { [0] = (void *)&stage0, [1] = (void *)&stage1, [2] = (void *)&stage2, [3] = (void *)&stage3, [4] = (void *)&stage4, [5] = (void *)&stage5, [6] = (void *)&stage6, [7] = (void *)&stage7, [8] = (void *)&stage8, [9] = (void *)&stage9, [10] = (void *)&stage10, [11] = (void *)&stage11, [12] = (void *)&stage12, [13] = (void *)&stage13, [14] = (void *)&stage14, [15] = (void *)&stage15, [16] = (void *)&stage16, [17] = (void *)&stage17, [18] = (void *)&stage18, [19] = (void *)&stage19, [20] = (void *)&stage20, [21] = (void *)&stage21, [22] = (void *)&stage22, [23] = (void *)&stage23, [24] = (void *)&stage24, [25] = (void *)&stage25, [26] = (void *)&stage26, [27] = (void *)&stage27, [28] = (void *)&stage28, [29] = (void *)&stage29, [30] = (void *)&stage30, [31] = (void *)&stage31, [32] = (void *)&stage32, [33] = (void *)&stage33, [34] = (void *)&stage34, [35] = (void *)&stage35, [36] = (void *)&stage36, [37] = (void *)&stage37, [38] = (void *)&stage38, [39] = (void *)&stage39, [40] = (void *)&stage40, [41] = (void *)&stage41, [42] = (void *)&stage42, [43] = (void *)&stage43, [44] = (void *)&stage44, [45] = (void *)&stage45, [46] = (void *)&stage46, [47] = (void *)&stage47, [48] = (void *)&stage48, [49] = (void *)&stage49, [50] = (void *)&stage50, [51] = (void *)&stage51, [52] = (void *)&stage52, [53] = (void *)&stage53, [54] = (void *)&stage54, [55] = (void *)&stage55, [56] = (void *)&stage56, [57] = (void *)&stage57, [58] = (void *)&stage58, [59] = (void *)&stage59, [60] = (void *)&stage60, [61] = (void *)&stage61, [62] = (void *)&stage62, [63] = (void *)&stage63, [64] = (void *)&stage64, [65] = (void *)&stage65, [66] = (void *)&stage66, [67] = (void *)&stage67, [68] = (void *)&stage68, [69] = (void *)&stage69, [70] = (void *)&stage70, [71] = (void *)&stage71, [72] = (void *)&stage72, [73] = (void *)&stage73, [74] = (void *)&stage74, [75] = (void *)&stage75, [76] = (void *)&stage76, [77] = (void *)&stage77, [78] = (void *)&stage78, [79] = (void *)&stage79 },
};

SEC("xdp") int entry(struct xdp_md *ctx) { bpf_tail_call(ctx, &stages, ctx->rx_queue_index % 80); return XDP_DROP; }
char __license[] SEC("license") = "GPL";
