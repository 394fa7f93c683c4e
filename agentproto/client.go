package agentproto

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// Client is the agent's side of the channel.
type Client struct {
	mu  sync.Mutex
	rw  io.ReadWriter
	seq uint32
}

// NewClient speaks on rw. If rw has SetDeadline (an *os.File opened
// non-blocking, such as a virtio-serial port, or a net.Conn), requests
// honour their context's deadline; otherwise they wait for the reply.
func NewClient(rw io.ReadWriter) *Client {
	return &Client{rw: rw, seq: uint32(time.Now().UnixNano())}
}

type deadliner interface{ SetDeadline(time.Time) error }

// maxStale bounds the replies with another seq (to requests of an earlier,
// interrupted agent) skipped while waiting for ours.
const maxStale = 16

// Do sends one request and returns the OK payload, or the Error reply as
// an *Error.
func (c *Client) Do(ctx context.Context, t Type, req any) (json.RawMessage, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	payload := []byte("{}")
	if req != nil {
		var err error
		if payload, err = json.Marshal(req); err != nil {
			return nil, fmt.Errorf("encode %s request: %w", t, err)
		}
	}
	if d, ok := c.rw.(deadliner); ok {
		dl, _ := ctx.Deadline()
		d.SetDeadline(dl)
		defer d.SetDeadline(time.Time{})
	}
	c.seq++
	if c.seq == 0 {
		c.seq++
	}
	seq := c.seq
	if err := WriteFrame(c.rw, Frame{Type: t, Seq: seq, Payload: payload}); err != nil {
		return nil, fmt.Errorf("send %s request: %w", t, err)
	}
	for stale := 0; ; stale++ {
		f, err := ReadFrame(c.rw, MaxPayload)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("%s request: no answer: %w", t, ctx.Err())
			}
			return nil, fmt.Errorf("%s request: read answer: %w", t, err)
		}
		if f.Seq != seq && f.Seq != 0 {
			if stale >= maxStale {
				return nil, fmt.Errorf("%s request: no answer among %d replies to other requests", t, stale)
			}
			continue
		}
		switch f.Type {
		case TypeOK:
			return json.RawMessage(f.Payload), nil
		case TypeError:
			e := &Error{}
			if err := json.Unmarshal(f.Payload, e); err != nil {
				return nil, fmt.Errorf("%s request: undecodable error reply: %w", t, err)
			}
			return nil, e
		default:
			return nil, fmt.Errorf("%s request: the daemon answered with a %s frame", t, f.Type)
		}
	}
}

// Caps asks what programs on this VM may use.
func (c *Client) Caps(ctx context.Context) (json.RawMessage, error) {
	return c.Do(ctx, TypeCaps, nil)
}

// Status asks for this VM's program and counters.
func (c *Client) Status(ctx context.Context) (json.RawMessage, error) {
	return c.Do(ctx, TypeStatus, nil)
}

// Submit loads a program on this VM.
func (c *Client) Submit(ctx context.Context, r SubmitRequest) (json.RawMessage, error) {
	return c.Do(ctx, TypeSubmit, r)
}

// Replace swaps this VM's program for another.
func (c *Client) Replace(ctx context.Context, r ReplaceRequest) (json.RawMessage, error) {
	return c.Do(ctx, TypeReplace, r)
}

// Remove puts the built-in program back.
func (c *Client) Remove(ctx context.Context, r RemoveRequest) error {
	_, err := c.Do(ctx, TypeRemove, r)
	return err
}

// IsCode reports whether err is an Error reply with the code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}
