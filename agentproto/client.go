package agentproto

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Client is the agent's side of the channel. Its methods may be called
// concurrently; they take turns, one request at a time.
//
// Each request gets the next sequence number (starting from a clock-derived
// value, so that a restarted agent does not reuse the numbers of one that
// was interrupted). While waiting for its answer the Client skips up to 16
// frames answering other sequence numbers, replies still in the channel
// from an earlier, interrupted request. An answer with seq 0 is taken as
// the answer: the daemon answers a frame it could not read with seq 0 and
// closes the channel.
//
// After a framing error, a timeout or a cancellation the byte stream may be
// out of step; a long-lived agent should reopen the port and make a new
// Client.
type Client struct {
	mu  sync.Mutex
	rw  io.ReadWriter
	seq uint32
}

// NewClient speaks on rw. If rw has a SetDeadline method (a net.Conn, or an
// *os.File for a device that supports polling such as a virtio-serial
// port; open it with os.OpenFile(path, os.O_RDWR, 0)), a request ends when
// its context does, by setting the deadline to the context's (and to the
// past when the context is cancelled); the Client clears the deadline
// afterwards. Without SetDeadline, or if it fails, a request waits for its
// answer whatever the context says.
func NewClient(rw io.ReadWriter) *Client {
	return &Client{rw: rw, seq: uint32(time.Now().UnixNano())}
}

type deadliner interface{ SetDeadline(time.Time) error }

// maxStale bounds the replies with another seq (to requests of an earlier,
// interrupted agent) skipped while waiting for ours.
const maxStale = 16

// Do sends one request of type t with req as its JSON payload (nil: {}) and
// returns the OK payload, or the Error reply as an *Error.
func (c *Client) Do(ctx context.Context, t Type, req any) (json.RawMessage, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%s request: %w", t, err)
	}
	payload := []byte("{}")
	if req != nil {
		var err error
		if payload, err = json.Marshal(req); err != nil {
			return nil, fmt.Errorf("encode %s request: %w", t, err)
		}
	}
	if d, ok := c.rw.(deadliner); ok {
		dl, _ := ctx.Deadline()
		if d.SetDeadline(dl) == nil {
			expired := make(chan struct{})
			stop := context.AfterFunc(ctx, func() {
				d.SetDeadline(time.Unix(1, 0))
				close(expired)
			})
			defer func() {
				if !stop() {
					<-expired // let it finish before clearing the deadline
				}
				d.SetDeadline(time.Time{})
			}()
		}
	}
	c.seq++
	if c.seq == 0 {
		c.seq++
	}
	seq := c.seq
	if err := WriteFrame(c.rw, Frame{Type: t, Seq: seq, Payload: payload}); err != nil {
		return nil, fmt.Errorf("send %s request: %w", t, ctxErr(ctx, err))
	}
	for stale := 0; ; stale++ {
		f, err := ReadFrame(c.rw, MaxPayload)
		if err != nil {
			if cerr := ctxErr(ctx, err); cerr != err {
				return nil, fmt.Errorf("%s request: no answer: %w", t, cerr)
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
			if e.Code == "" {
				e.Code = CodeInternal
			}
			return nil, e
		default:
			return nil, fmt.Errorf("%s request: the daemon answered with a %s frame", t, f.Type)
		}
	}
}

// ctxErr says why I/O failed: the context's error if it ended, or if the
// I/O hit the deadline the Client set from it (the deadline timer can fire
// a moment before the context's own); else err.
func ctxErr(ctx context.Context, err error) error {
	if e := ctx.Err(); e != nil {
		return e
	}
	if _, ok := ctx.Deadline(); ok && errors.Is(err, os.ErrDeadlineExceeded) {
		return context.DeadlineExceeded
	}
	return err
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
