package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	gqmp "github.com/digitalocean/go-qemu/qmp"
)

// monitor is the QMP transport. It replaces go-qemu's SocketMonitor, whose
// reader passes bufio.Scanner.Bytes() to the command waiting for a reply:
// the next line read (an event, say) overwrites that buffer while the
// reply is being decoded (a data race the race detector reports, and
// corrupted replies in practice). go-qemu's SocketMonitor also drops the
// error class and cannot bound the handshake or a command. This one decodes
// every message into its own buffer, keeps class and desc, and honours
// deadlines.
type monitor struct {
	c       net.Conn
	dec     *json.Decoder
	version gqmp.Version

	mu      sync.Mutex // one command at a time
	replies chan json.RawMessage
	events  chan gqmp.Event
	quit    chan struct{} // closed by close
	done    chan struct{} // closed when the reader stops
	rerr    error         // why the reader stopped; set before done closes

	closeOnce sync.Once
}

// dialMonitor connects and completes the QMP handshake before deadline.
func dialMonitor(path string, deadline time.Time) (*monitor, error) {
	d := net.Dialer{Deadline: deadline}
	c, err := d.Dial("unix", path)
	if err != nil {
		return nil, err
	}
	m := &monitor{
		c:       c,
		dec:     json.NewDecoder(c),
		replies: make(chan json.RawMessage, 1),
		events:  make(chan gqmp.Event, 256),
		quit:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	c.SetDeadline(deadline)
	type greeting struct {
		QMP *struct {
			Version gqmp.Version `json:"version"`
		} `json:"QMP"`
	}
	// The greeting is QEMU's first message; anything before it (not seen
	// from QEMU 7.2, but seen once on a loaded CI machine) is skipped, a
	// few messages at most, and named if no greeting follows.
	var b greeting
	var first json.RawMessage
	for i := 0; b.QMP == nil; i++ {
		var raw json.RawMessage
		if err := m.dec.Decode(&raw); err != nil {
			c.Close()
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil, errors.New("no QMP greeting in time (is another client connected to this monitor?)")
			}
			return nil, fmt.Errorf("reading greeting: %w", err)
		}
		if first == nil {
			first = raw
		}
		if err := json.Unmarshal(raw, &b); err != nil || (b.QMP == nil && i >= 8) {
			c.Close()
			if len(first) > 200 {
				first = first[:200]
			}
			return nil, fmt.Errorf("not a QMP greeting: QEMU sent %s", first)
		}
	}
	m.version = b.QMP.Version
	if _, err := c.Write([]byte(`{"execute":"qmp_capabilities"}` + "\n")); err != nil {
		c.Close()
		return nil, fmt.Errorf("capabilities handshake: %w", err)
	}
	var r reply
	if err := m.dec.Decode(&r); err != nil {
		c.Close()
		return nil, fmt.Errorf("capabilities handshake: %w", err)
	}
	if r.Error != nil {
		c.Close()
		return nil, &Error{Command: "qmp_capabilities", Class: r.Error.Class, Desc: r.Error.Desc}
	}
	c.SetDeadline(time.Time{})
	go m.read()
	return m, nil
}

type reply struct {
	Event  string          `json:"event"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

func (m *monitor) read() {
	defer close(m.events)
	for {
		var msg json.RawMessage // Decode copies into msg: no shared buffer
		if err := m.dec.Decode(&msg); err != nil {
			m.rerr = err
			close(m.done)
			return
		}
		var probe struct {
			Event string `json:"event"`
		}
		if json.Unmarshal(msg, &probe) == nil && probe.Event != "" {
			var ev gqmp.Event
			if json.Unmarshal(msg, &ev) == nil {
				select {
				case m.events <- ev:
				case <-m.quit:
				}
			}
			continue
		}
		select {
		case m.replies <- msg:
		case <-m.quit:
		}
	}
}

// roundtrip sends req and returns QEMU's reply, or an error when ctx ends
// first (the caller must then close the monitor: the reply may still come).
func (m *monitor) roundtrip(ctx context.Context, req []byte) (reply, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if dl, ok := ctx.Deadline(); ok {
		m.c.SetWriteDeadline(dl)
	}
	if _, err := m.c.Write(append(req, '\n')); err != nil {
		return reply{}, fmt.Errorf("%w (%v)", ErrClosed, err)
	}
	select {
	case msg := <-m.replies:
		var r reply
		if err := json.Unmarshal(msg, &r); err != nil {
			return reply{}, fmt.Errorf("decoding reply %s: %w", msg, err)
		}
		return r, nil
	case <-m.done:
		return reply{}, fmt.Errorf("%w (%v)", ErrClosed, m.rerr)
	case <-ctx.Done():
		return reply{}, ctx.Err()
	}
}

func (m *monitor) close() {
	m.closeOnce.Do(func() {
		close(m.quit)
		m.c.Close()
	})
}
