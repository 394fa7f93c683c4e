package vhost

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/unixsock"
)

// ioTimeout bounds reading the rest of a message once its header arrived,
// and writing a reply.
const ioTimeout = 5 * time.Second

// Server serves a NetDevice to one vhost-user front-end at a time on a unix
// socket (QEMU: -chardev socket,path=...; DPDK: net_virtio_user,path=...).
// When the front-end disconnects, the device's rings, fds and memory
// mappings are dropped and the server waits for the next connection.
type Server struct {
	path string
	dev  *NetDevice
	log  *slog.Logger
	ln   *unixsock.Listener

	mu     sync.Mutex
	conn   *net.UnixConn
	closed bool
	// idleSince is when the server last had no front-end: since it
	// started listening, or since the last front-end left.
	idleSince time.Time
}

// NewServer listens on path. A stale socket file there (nothing listens on
// it) is replaced; a live one is refused, never taken over. Close removes
// the socket file only while it is still this server's.
func NewServer(path string, dev *NetDevice, log *slog.Logger) (*Server, error) {
	if dev == nil {
		return nil, errors.New("vhost: NewServer: nil device")
	}
	if log == nil {
		log = dev.log
	}
	ln, err := unixsock.Listen(path, true)
	if err != nil {
		return nil, fmt.Errorf("vhost: listen: %w", err)
	}
	return &Server{path: path, dev: dev, log: log.With("socket", path), ln: ln, idleSince: time.Now()}, nil
}

// Path returns the socket path.
func (s *Server) Path() string { return s.path }

// secondFrontEndGrace is how long a front-end that connects while another
// is served waits for that one to go away (a front-end that reconnects
// often connects again before the old connection is torn down) before it
// is refused.
const secondFrontEndGrace = 2 * time.Second

// Serve accepts front-ends one after the other until ctx is done or Close
// is called; then it returns nil. Errors of a connection are logged and end
// only that connection.
//
// A front-end that connects while another is served is closed after
// secondFrontEndGrace, with a warning, rather than left unanswered in the
// listen backlog: QEMU runs the vhost-user handshake of netdev_add in its
// main loop, and a handshake nobody answers would freeze that QEMU.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	conns := make(chan *net.UnixConn)
	acceptErr := make(chan error, 1)
	done := make(chan struct{})
	var acceptor sync.WaitGroup
	acceptor.Add(1)
	go func() {
		defer acceptor.Done()
		for {
			c, err := s.ln.AcceptUnix()
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					continue
				}
				acceptErr <- err
				return
			}
			t := time.NewTimer(secondFrontEndGrace)
			select {
			case conns <- c:
			case <-t.C:
				s.log.Warn("vhost: refused a front-end: another one is connected to this socket; only one QEMU (or DPDK) may use a VM's vhost-user socket")
				c.Close()
			case <-done:
				c.Close()
			}
			t.Stop()
		}
	}()
	defer func() {
		close(done)
		s.Close()
		acceptor.Wait()
	}()
	for {
		var c *net.UnixConn
		select {
		case c = <-conns:
		case err := <-acceptErr:
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			return fmt.Errorf("vhost: accept: %w", err)
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return nil
		}
		s.conn = c
		s.mu.Unlock()

		s.serveConn(c)

		s.mu.Lock()
		s.conn, s.idleSince = nil, time.Now()
		s.mu.Unlock()
		c.Close()
	}
}

// Connected reports whether a front-end is connected now.
func (s *Server) Connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn != nil
}

// NoFrontEndSince is when the server last had no front-end (the time it
// started listening, or the last front-end left); zero while one is
// connected.
func (s *Server) NoFrontEndSince() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		return time.Time{}
	}
	return s.idleSince
}

// Close stops listening and ends the current connection. Serve returns
// after the connection's state is torn down.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.conn != nil {
		s.conn.Close()
	}
	return s.ln.Close()
}

func (s *Server) serveConn(c *net.UnixConn) {
	log := s.log.With("conn", fmt.Sprintf("%p", c))
	log.Info("vhost: front-end connected")
	if err := s.dev.attach(log, func() { c.Close() }); err != nil {
		log.Error("vhost: cannot serve front-end", "err", err)
		return
	}
	defer func() {
		if s.dev.faulted.Load() {
			log.Error("vhost: front-end connection closed after a guest memory fault")
		}
		s.dev.detach()
		log.Info("vhost: front-end state torn down")
	}()
	r := newReader(c)
	for {
		h, payload, fds, err := r.read()
		if err != nil {
			if s.dev.faulted.Load() {
				// logged below
			} else if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				log.Info("vhost: front-end disconnected")
			} else {
				log.Error("vhost: reading request; closing connection", "err", err)
			}
			return
		}
		m, err := Decode(h, payload, len(fds), r.regions)
		if err != nil {
			closeFDs(fds)
			log.Error("vhost: bad request; closing connection", "err", err)
			return
		}
		log.Debug("vhost: request", "req", h.Request, "flags", h.Flags, "size", h.Size, "fds", len(fds))
		reply, err := s.dev.handle(m, fds, log)
		needAck := h.NeedReply() && s.dev.protocolAcked(ProtocolFeatureReplyAck) && reply == nil
		if err != nil {
			if !errors.Is(err, errRequest) || !needAck {
				log.Error("vhost: request failed; closing connection", "req", h.Request, "err", err)
				return
			}
			log.Error("vhost: request failed", "req", h.Request, "err", err)
			reply = []byte{1, 0, 0, 0, 0, 0, 0, 0}
		} else if needAck {
			reply = make([]byte, 8)
		}
		if reply == nil {
			continue
		}
		out := EncodeHeader(make([]byte, 0, HeaderSize+len(reply)), h.Request, uint32(len(reply)))
		out = append(out, reply...)
		c.SetWriteDeadline(time.Now().Add(ioTimeout))
		if _, err := c.Write(out); err != nil {
			log.Error("vhost: writing reply; closing connection", "req", h.Request, "err", err)
			return
		}
	}
}

func (d *NetDevice) protocolAcked(f uint64) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.protocol&f == f
}

// reader reads requests with their fds from a connection.
type reader struct {
	c       *net.UnixConn
	hdr     [HeaderSize]byte
	payload [MaxPayload]byte
	oob     []byte
	regions []MemoryRegion
}

func newReader(c *net.UnixConn) *reader {
	return &reader{c: c, oob: make([]byte, unix.CmsgSpace(4*MaxFDs)), regions: make([]MemoryRegion, 0, MaxMemoryRegions)}
}

// read returns the next request's header, payload and fds. The fds belong
// to the caller, also when an error is returned with them closed already.
func (r *reader) read() (_ Header, _ []byte, fds []int, err error) {
	defer func() {
		if err != nil {
			closeFDs(fds)
			fds = nil
		}
	}()
	r.c.SetReadDeadline(time.Time{}) // the front-end may be idle for long
	n, oobn, flags, _, err := r.c.ReadMsgUnix(r.hdr[:], r.oob)
	if oobn > 0 {
		fds, err = parseFDs(r.oob[:oobn], err)
	}
	if err != nil {
		return Header{}, nil, fds, err
	}
	if n == 0 {
		return Header{}, nil, fds, io.EOF
	}
	if flags&unix.MSG_CTRUNC != 0 {
		return Header{}, nil, fds, fmt.Errorf("%w: more than %d fds (control data truncated)", ErrMalformed, MaxFDs)
	}
	r.c.SetReadDeadline(time.Now().Add(ioTimeout))
	if n < HeaderSize {
		if _, err := io.ReadFull(r.c, r.hdr[n:]); err != nil {
			return Header{}, nil, fds, fmt.Errorf("reading header: %w", err)
		}
	}
	h, err := DecodeHeader(r.hdr[:])
	if err != nil {
		return h, nil, fds, err
	}
	p := r.payload[:h.Size]
	if _, err := io.ReadFull(r.c, p); err != nil {
		return h, nil, fds, fmt.Errorf("reading %v payload: %w", h.Request, err)
	}
	return h, p, fds, nil
}

// parseFDs extracts the fds of SCM_RIGHTS messages in oob.
func parseFDs(oob []byte, err error) ([]int, error) {
	msgs, perr := unix.ParseSocketControlMessage(oob)
	if perr != nil {
		return nil, errors.Join(err, fmt.Errorf("%w: control data: %w", ErrMalformed, perr))
	}
	var fds []int
	for _, m := range msgs {
		f, perr := unix.ParseUnixRights(&m)
		if perr != nil {
			err = errors.Join(err, fmt.Errorf("%w: control data: %w", ErrMalformed, perr))
			continue
		}
		fds = append(fds, f...)
	}
	return fds, err
}
