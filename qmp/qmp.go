// Package qmp is xdp-hostd's typed layer over QEMU's machine protocol (QMP),
// with github.com/digitalocean/go-qemu/qmp's message types: it asks a VM's QEMU for its
// run state and its virtio-net NICs, checks that the NIC the daemon
// registered (by MAC) is there, and hot-plugs or unplugs a vhost-user
// virtio-net-pci NIC.
//
// Every call is bounded: by the caller's context, and by the Client's
// timeout when that context has no earlier deadline. A QMP command cannot be
// abandoned, so when a command outlives its bound the Client closes the
// connection (a late reply would otherwise be taken as the reply
// to the next command) and every later call fails with ErrClosed; Dial a new
// Client.
//
// QMP errors come back as *Error (command, class, desc).
//
// The transport is this package's own (monitor.go), not go-qemu's
// SocketMonitor: that one races on its read buffer (a reply can be
// overwritten by the next message while it is decoded), drops the error
// class and has no deadlines.
//
// # Machine notes (QEMU 7.2)
//
//   - netdev_add of a vhost-user netdev runs the vhost-user handshake
//     synchronously in QEMU's main loop: while the backend does not answer,
//     QEMU's monitor (every client's) is blocked. AttachVhostUser therefore
//     first checks that the backend's socket accepts a connection (client
//     mode), so that a missing backend is a clean error and not a hung VM
//     monitor. In server mode QEMU waits in netdev_add until the backend
//     connects.
//   - virtio-net-pci gets vectors=0: QEMU 7.2 under TCG segfaults in
//     vhost_net_start when the device uses MSI-X.
//   - device_del of a PCI device only asks the guest (ACPI hotplug on the pc
//     machine) to release it; DEVICE_DELETED comes when it did (the Debian
//     guest of vmtests does, within a second under TCG). A guest
//     without ACPI hotplug support, or a VM with no OS at all, never
//     releases it: DetachVhostUser then fails with ErrUnplugTimeout and
//     leaves netdev and chardev in place, so that a later call can finish.
package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	gqmp "github.com/digitalocean/go-qemu/qmp"
)

// DefaultTimeout bounds a command whose context has no deadline when Dial
// was given a timeout of 0.
const DefaultTimeout = 10 * time.Second

// ErrClosed is returned by calls on a Client whose connection is gone:
// closed by Close, by QEMU, or after a command outlived its bound.
var ErrClosed = errors.New("qmp: connection closed")

// Error is an error returned by QEMU for a command.
type Error struct {
	// Command is the QMP command that failed.
	Command string
	// Class is QMP's error class: GenericError, CommandNotFound,
	// DeviceNotFound, DeviceNotActive or KVMMissingCap.
	Class string
	// Desc is QEMU's human-readable description.
	Desc string
}

func (e *Error) Error() string {
	return fmt.Sprintf("qmp: %s: %s: %s", e.Command, e.Class, e.Desc)
}

// isNotFound reports whether err says the object (device, netdev, chardev)
// does not exist.
func isNotFound(err error) bool {
	var qe *Error
	if !errors.As(err, &qe) {
		return false
	}
	return qe.Class == "DeviceNotFound" || strings.Contains(qe.Desc, "not found")
}

// Client is a QMP connection to one QEMU. Its methods may be called
// concurrently; commands are sent one at a time.
type Client struct {
	path    string
	timeout time.Duration
	mon     *monitor

	mu     sync.Mutex
	subs   map[chan gqmp.Event]struct{}
	broken error // non-nil once the connection is unusable

	eventsDone chan struct{}
}

// Dial connects to the QMP socket at path and completes the capabilities
// handshake, all within timeout (0 means DefaultTimeout). The timeout also
// bounds each later command whose context has no earlier deadline.
//
// QEMU serves one QMP client per socket at a time: while another client is
// connected, QEMU accepts the connection but sends no greeting, and Dial
// fails when timeout passes.
func Dial(path string, timeout time.Duration) (*Client, error) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	mon, err := dialMonitor(path, time.Now().Add(timeout))
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s: %w", path, err)
	}
	c := &Client{
		path:       path,
		timeout:    timeout,
		mon:        mon,
		subs:       make(map[chan gqmp.Event]struct{}),
		eventsDone: make(chan struct{}),
	}
	go c.dispatch()
	return c, nil
}

// Version is the QEMU version from the QMP greeting.
func (c *Client) Version() gqmp.Version { return c.mon.version }

// dispatch forwards QEMU's events to subscribers, never blocking the reader.
func (c *Client) dispatch() {
	defer close(c.eventsDone)
	for ev := range c.mon.events {
		c.mu.Lock()
		for ch := range c.subs {
			select {
			case ch <- ev:
			default: // a slow subscriber loses events, never the connection
			}
		}
		c.mu.Unlock()
	}
	c.fail(ErrClosed)
}

func (c *Client) subscribe() (<-chan gqmp.Event, func()) {
	ch := make(chan gqmp.Event, 64)
	c.mu.Lock()
	c.subs[ch] = struct{}{}
	c.mu.Unlock()
	return ch, func() {
		c.mu.Lock()
		delete(c.subs, ch)
		c.mu.Unlock()
	}
}

// fail marks the connection unusable with err (the first reason wins) and
// closes it.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.broken == nil {
		c.broken = err
	}
	c.mu.Unlock()
	c.mon.close()
}

func (c *Client) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.broken
}

// Close closes the connection. It is safe to call more than once.
func (c *Client) Close() error {
	c.fail(ErrClosed)
	<-c.eventsDone
	return nil
}

// bound returns ctx limited by the Client's timeout.
func (c *Client) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.timeout)
}

// Run sends the QMP command cmd with args (nil: none; anything that
// marshals to a JSON object) and decodes its "return" into out (nil:
// discarded). A QEMU error is an *Error. When the command has no reply
// within its bound, the connection is closed (see the package doc).
func (c *Client) Run(ctx context.Context, cmd string, args, out any) error {
	if err := c.err(); err != nil {
		return fmt.Errorf("qmp: %s: %w", cmd, err)
	}
	if cmd == "" {
		return errors.New("qmp: empty command name")
	}
	req, err := json.Marshal(gqmp.Command{Execute: cmd, Args: args})
	if err != nil {
		return fmt.Errorf("qmp: %s: encoding arguments: %w", cmd, err)
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	r, err := c.mon.roundtrip(ctx, req)
	if err != nil {
		if ctx.Err() != nil && !errors.Is(err, ErrClosed) {
			c.fail(fmt.Errorf("%w (after %s had no reply)", ErrClosed, cmd))
			return fmt.Errorf("qmp: %s: no reply: %w; connection closed", cmd, err)
		}
		if errors.Is(err, ErrClosed) {
			c.fail(ErrClosed)
		}
		return fmt.Errorf("qmp: %s: %w", cmd, err)
	}
	if r.Error != nil {
		return &Error{Command: cmd, Class: r.Error.Class, Desc: r.Error.Desc}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(r.Return, out); err != nil {
		return fmt.Errorf("qmp: %s: decoding reply %s: %w", cmd, r.Return, err)
	}
	return nil
}

// Status returns the VM's run state (query-status): "running", "paused",
// "prelaunch", "shutdown", "inmigrate", …
func (c *Client) Status(ctx context.Context) (string, error) {
	var st struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := c.Run(ctx, "query-status", nil, &st); err != nil {
		return "", err
	}
	return st.Status, nil
}
