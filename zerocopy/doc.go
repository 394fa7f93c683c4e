// Package zerocopy is xdp-hostd's AF_XDP layer: one socket per (interface,
// queue), bound to a VM's dedicated RX queue, over a UMEM whose memory the
// caller supplies, and a bounded pool of free frames ("page pool").
//
// # Model
//
// A UMEM is memory cut into equal frames; NewUMEM takes any page-aligned
// memory (AllocUMEM maps some for the daemon's copy mode; zero-copy mode
// will pass a VM's memory). Open registers it with a new socket, creates
// the four rings (fill, RX, TX, completion: FillQueue, RXQueue, TXQueue,
// CompletionQueue) and binds to the queue, in copy mode unless
// Options.ZeroCopy. It loads no XDP program: the caller's program redirects
// into an XSKMAP holding Socket.FD (Socket.Register puts it there).
//
// Frames move in batches: Receive takes a batch of descriptors from the RX
// ring and refills the fill ring from the pool; Release gives a batch back;
// Transmit copies a batch into free frames, queues it with one ring update
// and kicks the kernel with one sendto; completions return to the pool on
// the next Transmit or Complete. Each ring keeps cached indices and touches
// the shared ones once per batch (see ring.go). Wait sleeps in poll until
// there is something to do, optionally after a spin (Options.Spin) and with
// the kernel's NAPI busy polling (Options.BusyPoll).
//
// Back-pressure (a full ring, an empty pool, EAGAIN, EBUSY or ENOBUFS from
// the kernel) shows as fewer frames moved and in Stats, never as a panic.
//
// # Zero-copy into guest memory (GuestRX)
//
// GuestRX (guest.go) is the receive side of the per-VM zero-copy mode: the
// UMEM of its socket is the guest's memory itself, so a frame is written
// once, by the kernel, into the RX buffer the guest posted.
//
//   - The memory: AF_XDP takes one UMEM area, vhost-user shares guest
//     memory as up to 8 regions (fds). vhost.MemoryTable.MapContiguous
//     reserves one range and places a second mapping of each region's pages
//     in it (mremap of the shared mapping with old size 0, MAP_FIXED), each
//     on a page boundary; the view is registered in unaligned-chunk mode
//     (XDP_UMEM_UNALIGNED_CHUNK_FLAG), so a fill address is any byte offset
//     of the view. The kernel pins every page of it at registration.
//   - The buffers: GuestRX pops RX chains from the guest's virtqueue in
//     bulk, keeps those of exactly one device-writable descriptor of at
//     least BufLen bytes lying inside one region and overlapping no buffer
//     in flight, and posts to the fill ring the address of a chunk that
//     ends where the used part of the buffer ends (chunk = max(2048,
//     BufLen-HeaderLen+256) bytes). The UMEM headroom is chosen so that the
//     kernel puts the packet at chunk + headroom + XDP_PACKET_HEADROOM =
//     buffer + HeaderLen: the virtio-net header (12 bytes, num_buffers = 1)
//     goes right before it, written by GuestRX on completion. Refused
//     chains go back at once as used entries of length 0, counted by
//     reason (GuestRXStats); a chain outside guest memory breaks the queue
//     (vhost's rule), which stops that VM's zero-copy RX only.
//   - What the kernel writes where: copy-mode sockets (veth, tap, any
//     driver without AF_XDP zero-copy; the only mode GuestRX binds) memcpy
//     the frame from the driver's buffer to buffer+HeaderLen, at most
//     BufLen-HeaderLen bytes (longer frames are dropped and counted by the
//     kernel, rx_dropped), and write nothing else of the chunk: not the
//     bytes in front of the buffer that the chunk also covers, not
//     metadata. A NIC with an AF_XDP zero-copy driver would DMA into the
//     same place, but the kernel then also requires a chunk not to cross a
//     page boundary unless the pages are DMA-contiguous (xp_check_unaligned,
//     xp_desc_crosses_non_contig_pg): with 4 KiB guest pages about half the
//     chunks over guest buffers cross one, so XDP_ZEROCOPY needs hugepage
//     guest memory and is not offered yet.
//   - Completions: each RX descriptor (chunk address | offset << 48) maps
//     back through the table of buffers in flight to its descriptor head;
//     the header is written, the used entry pushed, and once per Poll the
//     used index is published with one store and the driver notified at
//     most once.
//
// What must never happen: the kernel writing into memory the guest no
// longer shares. The pages stay pinned, so the kernel would write into
// pages the guest may have reused or the daemon unmapped. Hence: Close
// (which unmaps the rings and closes the socket; the kernel unbinds it and
// waits for receivers in flight inside close) before unmapping the view or
// the memory table, on SET_MEM_TABLE, on a device stop (GET_VRING_BASE) and
// on disconnect, in that order; buffers in flight are given back empty
// except on disconnect. Also never: a fill address whose chunk leaves its
// region (the next region in the view is another file), two buffers in
// flight that overlap (one completion would be taken for the other), a
// buffer shorter than the frames the kernel may write (the kernel would
// write past it into other guest memory).
//
// Frames larger than one guest buffer are dropped and counted (kernel
// rx_dropped), not spread over mergeable buffers: AF_XDP multi-buffer
// (XDP_USE_SG, frags-aware programs) would make each fragment a chunk of
// its own and num_buffers the fragment count, but every guest program
// would then have to be frags-aware, and at the VM MTU (1500) every Linux
// guest's RX buffers (1536+ bytes mergeable, 64 KiB big-packet chains)
// hold a whole frame. A VM whose MTU exceeds its buffers belongs in copy
// mode.
//
// TX stays copy: a guest owns its memory and can rewrite a frame after the
// source-MAC check and before the kernel reads it, so a check in place in
// guest memory is a race the host cannot win; the copy is what makes the
// check hold.
//
// # Concurrency
//
// Nothing here is safe for concurrent use: a Socket, its rings and its pool
// belong to one goroutine (the one serving that VM queue).
//
// # Unsafe
//
// Only xsk_unsafe.go uses package unsafe (the rings' shared words and
// descriptor arrays, and struct socket options).
package zerocopy
