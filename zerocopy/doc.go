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
