// Package vhost makes the daemon the virtio-net device of a VM through the
// vhost-user protocol: QEMU (or DPDK's virtio-user) connects to a unix socket
// as the front-end and shares guest memory and virtqueues; this package is the
// back-end and moves frames in and out of those queues. The host has no
// vhost-net module: everything happens in this process.
//
// # Layers
//
//   - MemoryTable: the guest memory of VHOST_USER_SET_MEM_TABLE, each
//     region's fd mapped once (MAP_SHARED). Guest-physical (descriptor
//     buffers) and front-end virtual (ring) addresses translate to byte
//     slices with overflow-safe checks; a range outside one region is an
//     error wrapping ErrOutOfRange.
//   - Virtqueue: a split virtqueue in guest memory. Pop takes descriptor
//     chains into a reusable Chain; PushUsed and PublishUsed return them with
//     one used->idx store per batch and report whether the driver wants an
//     interrupt (VIRTIO_RING_F_EVENT_IDX or VRING_AVAIL_F_NO_INTERRUPT).
//     Anything a hostile driver can get wrong (loops, chains longer than the
//     queue, indexes and addresses out of range, bad indirect tables, an
//     avail index running ahead) breaks the queue: an error wrapping
//     ErrQueueBroken, logged once, never a panic.
//   - Protocol: DecodeHeader and Decode check each request's payload size
//     and fd count exactly; anything unknown or malformed is ErrMalformed.
//   - Server: one front-end at a time on a unix socket. A request that cannot
//     be decoded closes the connection; a refused request is answered with a
//     failed REPLY_ACK when the front-end asked for one, else the connection
//     is closed. On disconnect every ring, fd and mapping is dropped and the
//     server waits for the next front-end (QEMU reconnects).
//   - NetDevice: virtio-net queue pairs (RX = 2*pair, TX = 2*pair+1) with the
//     12-byte virtio_net_hdr_v1. Deliver copies a batch of frames into the
//     guest (mergeable RX buffers: a frame may span chains, num_buffers set)
//     with one used-index update and at most one interrupt; TX frames reach
//     NetConfig.TX in batches from a per-connection goroutine woken by kick
//     eventfds through epoll (optionally busy-polling).
//
// # Features
//
// Offered: VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX,
// VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_NET_F_MQ (more than one pair),
// VIRTIO_NET_F_GUEST_ANNOUNCE (the guest announces itself after a
// migration; QEMU runs the control queue), VHOST_F_LOG_ALL and
// VHOST_USER_F_PROTOCOL_FEATURES; protocol features MQ, REPLY_ACK,
// LOG_SHMFD and RARP. Not offered: checksum and segmentation offloads,
// VIRTIO_NET_F_MAC (the front-end supplies the config space),
// CONFIGURE_MEM_SLOTS (so at most MaxMemoryRegions regions), packed rings,
// postcopy and IOMMU translation.
//
// # Live migration
//
// SET_LOG_BASE shares a dirty bitmap; while VHOST_F_LOG_ALL is acked every
// guest page the device writes (RX buffers, and used rings the front-end
// flagged with VHOST_VRING_F_LOG) is marked after the write, before the
// data path releases the device, so GET_VRING_BASE answers only once every
// write of the ring is published and logged (dirtylog.go). SEND_RARP sends
// a RARP frame from the guest's MAC to NetConfig.TX.
//
// # Trust
//
// Guest memory is shared with a guest that may be hostile and that can
// change it at any time. Every value read from it is read once and checked
// before use; frames handed to NetConfig.TX point into guest memory when
// they are contiguous there and may change under the handler. Regions must
// lie within their files when mapped, and a memfd that allows sealing is
// sealed against shrinking (F_SEAL_SHRINK) before. A front-end that still
// shrinks the file behind a region (hugetlbfs, tmpfs, a plain file, an
// unsealable memfd) makes the next touch of it fault: every goroutine
// touching guest memory runs with debug.SetPanicOnFault and recovers, the
// queue breaks and that connection is closed; the process and the other
// devices go on (fault.go).
//
// Only little-endian hosts are supported (the rings are little-endian and
// are accessed with native atomics). All uses of package unsafe are in
// ring_unsafe.go.
package vhost
