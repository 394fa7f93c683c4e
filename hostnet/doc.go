// Package hostnet is the host side of xdp-hostd's plumbing, over netlink,
// ethtool ioctls, /dev/net/tun and the BPF syscall.
//
// # Uplinks
//
// Inspect reports what a NIC offers before a dataplane takes it over: its
// MAC, RX and TX queue counts, the XDP features its driver announces through
// the kernel's "netdev" generic netlink family (Linux 6.3+; older kernels
// give Source "unavailable: ..."), and any XDP program already attached,
// with the bpf_link holding it, so that the daemon refuses to take over an
// uplink that is in use and says how to free it.
//
// # Dataplane
//
// Open loads the dispatch program and attaches it to the uplink with a
// bpf_link (native mode, or generic as a fallback); AddVM gives a VM a slot,
// its dedicated RX queues, its MAC, its port table (a DEVMAP_HASH it may
// redirect into, every change recorded in an audit log) and its program in
// the slot's PROG_ARRAY entry, replaced atomically.
//
// # Queue steering
//
// SteerMAC installs an ntuple rule (ETHTOOL_SRXCLSRLINS, ETHER_FLOW on the
// destination MAC) that puts a VM's frames on its dedicated queue; Ntuple
// reads a device's rule table. Devices without RX flow classification, veth
// among them, give errors wrapping ErrNotSupported, and dispatch falls back
// to matching the destination MAC.
//
// # Taps and pins
//
// CreateTap makes a multi-queue tap whose non-blocking queue files the
// caller holds (the device lives as long as they are open); AdoptTap takes
// one QEMU or libvirt created. EnsureBPFFS makes sure pins have a BPF
// filesystem to go to, mounting one as Cilium's agent does.
//
// # Namespaces and tests
//
// Anything that names a device takes a namespace (an NSRunner or a path
// such as /run/netns/NAME; nil or "" means the caller's), because ifindexes,
// device names, ioctl sockets and generic netlink replies are all per
// namespace. Package hostnet/testnet builds test topologies from uniquely
// named namespaces and multi-queue veth pairs, removed when a test ends.
//
// Errors wrap the sentinels in errs.go (ErrNoSuchInterface, ErrNotSupported,
// ErrBPFFSMissing, ...) and say what to do about them.
package hostnet
