package vhost

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"golang.org/x/sys/unix"
)

// errRequest marks a request the front-end got wrong (bad index, ring
// running, features not offered). With REPLY_ACK it is answered with a
// failure; otherwise the connection is closed.
var errRequest = errors.New("request refused")

func refuse(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errRequest, fmt.Sprintf(format, args...))
}

// handle applies one decoded request. It takes ownership of fds. A non-nil
// reply is the payload of the request's own reply (GET_* requests).
func (d *NetDevice) handle(m Message, fds []int, log *slog.Logger) (reply []byte, err error) {
	defer func() { closeFDs(fds) }()
	u64 := func(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }
	switch m.Request {
	case ReqGetFeatures:
		return u64(d.offer), nil
	case ReqSetFeatures:
		if extra := m.U64 &^ d.offer; extra != 0 {
			return nil, refuse("SET_FEATURES %#x: bits %#x were not offered", m.U64, extra)
		}
		d.mu.Lock()
		was := d.features&FeatureLogAll != 0
		if m.U64&FeatureLogAll != 0 && !was {
			d.releaseAllRX(true) // the kernel's writes would not be logged
		}
		d.features, d.featuresSet = m.U64, true
		d.hdrLen = d.headerLen(m.U64)
		logging, haveLog := m.U64&FeatureLogAll != 0, d.dlog != nil
		if !logging && was {
			d.offerAllRX(log)
		}
		d.mu.Unlock()
		log.Debug("vhost: features acked", "features", fmt.Sprintf("%#x", m.U64))
		if logging != was {
			// Pages written before SET_LOG_BASE cannot be logged; QEMU
			// sends it right after when it (re)starts a device while
			// migrating.
			log.Info("vhost: dirty page logging (VHOST_F_LOG_ALL)", "on", logging, "log_mapped", haveLog)
		}
		return nil, nil
	case ReqSetLogBase:
		if len(fds) == 0 {
			return nil, refuse("SET_LOG_BASE without an fd: the back-end only logs into a log shared as an fd (VHOST_USER_PROTOCOL_F_LOG_SHMFD)")
		}
		if !d.protocolAcked(ProtocolFeatureLogShmfd) {
			return nil, refuse("SET_LOG_BASE before VHOST_USER_PROTOCOL_F_LOG_SHMFD was negotiated (SET_PROTOCOL_FEATURES)")
		}
		l, err := newDirtyLog(m.Log, fds[0])
		fds = nil // closed by newDirtyLog
		if err != nil {
			return nil, fmt.Errorf("%w: SET_LOG_BASE: %w", errRequest, err)
		}
		if err := d.setLog(l, log); err != nil {
			l.close()
			return nil, fmt.Errorf("%w: SET_LOG_BASE: %w", errRequest, err)
		}
		// The reply has no payload (QEMU reads only the header).
		return []byte{}, nil
	case ReqSendRARP:
		return nil, d.sendRARP(m.U64, log)
	case ReqSetLogFD:
		// Optional: an eventfd to tell the front-end the log changed.
		// QEMU reads the log when it syncs, so it is not used.
		log.Debug("vhost: SET_LOG_FD ignored")
		return nil, nil
	case ReqGetProtocolFeatures:
		return u64(d.ProtocolFeatures()), nil
	case ReqSetProtocolFeatures:
		if extra := m.U64 &^ d.ProtocolFeatures(); extra != 0 {
			return nil, refuse("SET_PROTOCOL_FEATURES %#x: bits %#x were not offered", m.U64, extra)
		}
		d.mu.Lock()
		d.protocol = m.U64
		d.mu.Unlock()
		return nil, nil
	case ReqGetQueueNum:
		return u64(uint64(d.pairs)), nil
	case ReqSetOwner:
		return nil, nil
	case ReqResetOwner:
		log.Debug("vhost: RESET_OWNER ignored")
		return nil, nil
	case ReqSetMemTable:
		mem, err := NewMemoryTable(m.Regions, fds)
		fds = nil // NewMemoryTable closed them
		if err != nil {
			return nil, fmt.Errorf("%w: %w", errRequest, err)
		}
		d.setMemory(mem, log)
		return nil, nil
	case ReqSetVringNum:
		n := m.State.Num
		if n == 0 || n > MaxQueueSize || n&(n-1) != 0 {
			return nil, refuse("SET_VRING_NUM: size %d is not a power of two in [1, %d]", n, MaxQueueSize)
		}
		return nil, d.configure(m.State.Index, m.Request, func(q *queue) { q.num = uint16(n) })
	case ReqSetVringAddr:
		if m.Addr.Flags&^uint32(VringFlagLog) != 0 {
			return nil, refuse("SET_VRING_ADDR: unknown flags %#x (only VHOST_VRING_F_LOG is defined)", m.Addr.Flags)
		}
		return nil, d.setVringAddr(m.Addr, log)
	case ReqSetVringBase:
		if m.State.Num > 0xffff {
			return nil, refuse("SET_VRING_BASE: %d does not fit a split ring index", m.State.Num)
		}
		return nil, d.configure(m.State.Index, m.Request, func(q *queue) { q.base = uint16(m.State.Num) })
	case ReqGetVringBase:
		base, err := d.stopQueue(m.State.Index)
		if err != nil {
			return nil, err
		}
		r := binary.LittleEndian.AppendUint32(nil, m.State.Index)
		return binary.LittleEndian.AppendUint32(r, uint32(base)), nil
	case ReqSetVringKick, ReqSetVringCall, ReqSetVringErr:
		fd := -1
		if !m.VringFD.NoFD {
			fd, fds = fds[0], nil
		}
		return nil, d.setVringFD(m.Request, m.VringFD, fd, log)
	case ReqSetVringEnable:
		if m.State.Num > 1 {
			return nil, refuse("SET_VRING_ENABLE: %d is neither 0 nor 1", m.State.Num)
		}
		q, err := d.queueAt(m.State.Index)
		if err != nil {
			return nil, err
		}
		d.mu.Lock()
		q.enabled = m.State.Num == 1
		d.mu.Unlock()
		log.Debug("vhost: vring enable", "queue", q.index, "enabled", m.State.Num == 1)
		return nil, nil
	}
	return nil, fmt.Errorf("%w: unsupported request %v", ErrMalformed, m.Request)
}

func (d *NetDevice) queueAt(idx uint32) (*queue, error) {
	if idx >= uint32(len(d.queues)) {
		return nil, refuse("queue index %d out of range [0, %d)", idx, len(d.queues))
	}
	return d.queues[idx], nil
}

// configure changes the setup of a stopped queue.
func (d *NetDevice) configure(idx uint32, req Request, f func(*queue)) error {
	q, err := d.queueAt(idx)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if q.vq != nil {
		return refuse("%v: queue %d is running", req, idx)
	}
	f(q)
	return nil
}

// setVringAddr sets a ring's addresses. On a running ring (QEMU turns
// logging on and off with SET_VRING_ADDR while the rings run) only the log
// flag and log_guest_addr may change.
func (d *NetDevice) setVringAddr(a VringAddr, log *slog.Logger) error {
	q, err := d.queueAt(a.Index)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if q.vq != nil {
		o := q.addr
		if a.Desc != o.Desc || a.Used != o.Used || a.Avail != o.Avail {
			return refuse("SET_VRING_ADDR: queue %d is running: only the log flag and address may change (stop it with GET_VRING_BASE first)", a.Index)
		}
	}
	if a.Flags&VringFlagLog != 0 && d.dlog != nil && !d.dlog.covers(a.Log, usedRingLen(q.num)) {
		return refuse("SET_VRING_ADDR: queue %d: the used ring logged at %#x (%d bytes) lies beyond the dirty log (%#x bytes)", a.Index, a.Log, usedRingLen(q.num), d.dlog.Size)
	}
	if q.addr.Flags&VringFlagLog != a.Flags&VringFlagLog {
		log.Debug("vhost: used ring logging", "queue", q.index, "on", a.Flags&VringFlagLog != 0, "log_guest_addr", fmt.Sprintf("%#x", a.Log))
	}
	q.addr, q.addrSet = a, true
	return nil
}

// setLog installs a new dirty log and unmaps the previous one, once the
// data path is out of it. The log must cover guest memory and the used
// rings logged.
func (d *NetDevice) setLog(l *dirtyLog, log *slog.Logger) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := l.coversMemory(d.mem); err != nil {
		return err
	}
	for _, q := range d.queues {
		if q.addrSet && q.addr.Flags&VringFlagLog != 0 && !l.covers(q.addr.Log, usedRingLen(q.num)) {
			return fmt.Errorf("queue %d: the used ring logged at %#x (%d bytes) lies beyond the dirty log (%#x bytes)", q.index, q.addr.Log, usedRingLen(q.num), l.Size)
		}
	}
	if l.seal == Shrinkable {
		log.Warn("vhost: the dirty log's file can shrink under the back-end (not a sealed memfd); should it, that connection is closed")
	}
	old := d.dlog
	d.dlog = l
	d.logMissWarned.Store(false)
	if err := old.close(); err != nil {
		log.Error("vhost: unmapping old dirty log", "err", err)
	}
	log.Info("vhost: dirty log mapped", "size", l.Size, "offset", l.Offset, "covers_gpa_below", fmt.Sprintf("%#x", l.pages()*LogPageSize))
	return nil
}

// setMemory installs a new memory table, moving running rings into it
// before the old one is unmapped.
func (d *NetDevice) setMemory(mem *MemoryTable, log *slog.Logger) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.releaseAllRX(true) // before the old table is unmapped
	for _, q := range d.queues {
		if q.vq == nil {
			continue
		}
		if err := q.vq.Remap(mem); err != nil {
			log.Error("vhost: ring not in the new memory table", "queue", q.index, "err", err)
			q.checkBroken()
		}
	}
	for i, seal := range mem.Sealing() {
		switch {
		case seal == SealedByBackend:
			log.Debug("vhost: sealed a guest memory region against shrinking (F_SEAL_SHRINK)", "region", i)
		case seal == Shrinkable && !d.sealWarned:
			d.sealWarned = true
			log.Warn("vhost: the front-end can shrink guest memory under the back-end (not a memfd sealed with F_SEAL_SHRINK, e.g. hugetlbfs or /dev/shm); should it, that connection is closed",
				"region", i, "regions", mem.Regions())
		}
	}
	if d.dlog != nil && d.features&FeatureLogAll != 0 {
		if err := d.dlog.coversMemory(mem); err != nil {
			log.Warn("vhost: the dirty log does not cover the new memory table; writes beyond it are not logged until the front-end sends a larger log (SET_LOG_BASE)", "err", err)
		}
	}
	old := d.mem
	d.mem = mem
	if err := old.Close(); err != nil {
		log.Error("vhost: unmapping old guest memory", "err", err)
	}
	log.Debug("vhost: memory table set", "regions", len(mem.regions))
	d.offerAllRX(log)
}

// stopQueue stops a ring (GET_VRING_BASE) and returns the next avail index
// it would have read.
func (d *NetDevice) stopQueue(idx uint32) (uint16, error) {
	q, err := d.queueAt(idx)
	if err != nil {
		return 0, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.releaseRX(q, true)
	if q.vq != nil {
		q.base = q.vq.LastAvail()
		d.log.Debug("vhost: queue stopped", "queue", q.index, "base", q.base, "used_idx", q.vq.pubUsed, "pushed", q.vq.nextUsed)
		q.vq = nil
	}
	d.setKick(q, -1)
	q.polled = false
	d.recountPolled()
	return q.base, nil
}

// setKick replaces a queue's kick fd, keeping the epoll set in step.
// Called with d.mu held.
func (d *NetDevice) setKick(q *queue, fd int) {
	if q.kickFD >= 0 {
		if q.tx && d.epfd >= 0 {
			unix.EpollCtl(d.epfd, unix.EPOLL_CTL_DEL, q.kickFD, nil)
		}
		unix.Close(q.kickFD)
	}
	q.kickFD = fd
}

func (d *NetDevice) recountPolled() {
	n := int32(0)
	for _, q := range d.queues {
		if q.polled && q.vq != nil {
			n++
		}
	}
	d.polling.Store(n)
}

func (d *NetDevice) setVringFD(req Request, v VringFD, fd int, log *slog.Logger) (err error) {
	q, err := d.queueAt(v.Index)
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch req {
	case ReqSetVringCall, ReqSetVringErr:
		p := &q.callFD
		if req == ReqSetVringErr {
			p = &q.errFD
		}
		if *p >= 0 {
			unix.Close(*p)
		}
		*p = fd
		return nil
	}
	// SET_VRING_KICK starts the ring.
	d.setKick(q, fd)
	if fd >= 0 {
		if err := unix.SetNonblock(fd, true); err != nil {
			return fmt.Errorf("%w: kick fd of queue %d: %w", errRequest, q.index, err)
		}
		if q.tx {
			ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(q.index)}
			if err := unix.EpollCtl(d.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
				return fmt.Errorf("vhost: watching kick fd of queue %d: %w", q.index, err)
			}
		}
	}
	q.polled = fd < 0
	if q.vq == nil {
		if err := d.startQueue(q, log); err != nil {
			return err
		}
	}
	d.recountPolled()
	if q.tx && fd >= 0 {
		// Look at buffers made available before the kick fd was watched.
		unix.Write(fd, eventOne[:])
	}
	return nil
}

// startQueue builds the virtqueue from the queue's setup. Called with d.mu
// held.
func (d *NetDevice) startQueue(q *queue, log *slog.Logger) (err error) {
	switch {
	case d.mem == nil:
		return refuse("queue %d started before SET_MEM_TABLE", q.index)
	case q.num == 0:
		return refuse("queue %d started before SET_VRING_NUM", q.index)
	case !q.addrSet:
		return refuse("queue %d started before SET_VRING_ADDR", q.index)
	}
	if d.faulted.Load() {
		return errFaulted
	}
	old := armFaults() // NewVirtqueue reads the used ring, DisableNotify writes it
	defer func() {
		if ferr := d.caught(q, old, recover()); ferr != nil {
			err = ferr
		}
	}()
	vq, err := NewVirtqueue(d.mem, VirtqueueConfig{
		Index:     q.index,
		Size:      q.num,
		DescAddr:  q.addr.Desc,
		AvailAddr: q.addr.Avail,
		UsedAddr:  q.addr.Used,
		LastAvail: q.base,
		EventIdx:  d.features&FeatureRingEventIdx != 0,
		Indirect:  d.features&FeatureRingIndirectDesc != 0,
		Logger:    log,
	})
	if err != nil {
		return fmt.Errorf("%w: %w", errRequest, err)
	}
	if !q.tx {
		vq.DisableNotify() // RX buffers are taken when frames arrive, not on kicks
		if d.logging() {
			d.startLog(q)
			d.logUsed(q)
			d.endLog(q)
		}
	}
	q.vq, q.reported = vq, false
	if d.features&FeatureProtocolFeatures == 0 {
		q.enabled = true // rings start enabled without protocol features
	}
	log.Debug("vhost: queue started", "queue", q.index, "size", q.num, "base", q.base, "used_idx", vq.nextUsed, "enabled", q.enabled)
	d.offerRX(q, log)
	return nil
}

// RARPFrame builds the frame QEMU's self-announcement sends for a guest
// that cannot announce itself: a broadcast RARP "reverse request" (opcode
// 3) from mac, for mac, padded to the 60-byte Ethernet minimum. Switches
// on the path learn where mac is now.
func RARPFrame(mac net.HardwareAddr) []byte {
	f := make([]byte, 60)
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], mac)
	binary.BigEndian.PutUint16(f[12:], 0x8035) // ETH_P_RARP
	binary.BigEndian.PutUint16(f[14:], 1)      // hardware: Ethernet
	binary.BigEndian.PutUint16(f[16:], 0x0800) // protocol: IPv4
	f[18], f[19] = 6, 4                        // address lengths
	binary.BigEndian.PutUint16(f[20:], 3)      // reverse request
	copy(f[22:28], mac)                        // sender hardware address
	copy(f[32:38], mac)                        // target hardware address
	return f
}

// sendRARP handles SEND_RARP: after a migration, QEMU asks the back-end of
// a guest that did not negotiate VIRTIO_NET_F_GUEST_ANNOUNCE to announce
// the guest's MAC. The RARP frame goes to the TX handler as if pair 0 of
// the guest sent it, so it leaves by the VM's own path (and passes its
// source MAC check). The device lock keeps the kick goroutine's TX calls
// out meanwhile: the handler is never called concurrently.
func (d *NetDevice) sendRARP(v uint64, log *slog.Logger) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	mac := net.HardwareAddr(b[:6])
	if b[0]&1 != 0 || v&0xffffffffffff == 0 {
		return refuse("SEND_RARP: %v is not a unicast MAC address", mac)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cfg.TX == nil {
		log.Info("vhost: SEND_RARP: no TX handler, announcement dropped", "mac", mac.String())
		return nil
	}
	d.cfg.TX(0, [][]byte{RARPFrame(mac)})
	log.Info("vhost: announced the guest's MAC with a RARP frame (SEND_RARP)", "mac", mac.String())
	return nil
}
