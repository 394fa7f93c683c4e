package agentproto

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"
)

// Handler answers one VM's agent. Results are encoded as JSON; an error that
// is an *Error is sent as it is, any other as CodeInternal.
type Handler interface {
	Caps(ctx context.Context) (any, error)
	Status(ctx context.Context) (any, error)
	Submit(ctx context.Context, r SubmitRequest) (any, error)
	Replace(ctx context.Context, r ReplaceRequest) (any, error)
	Remove(ctx context.Context, r RemoveRequest) (any, error)
}

// Limiter rate-limits program changes.
type Limiter interface {
	// Allow takes a token; if there is none it says how long until one.
	Allow() (ok bool, retryAfter time.Duration)
}

// ServeOptions configure Serve.
type ServeOptions struct {
	// Limiter applies to Submit, Replace and Remove; nil: no limit. Give
	// each VM one Limiter that outlives its connections.
	Limiter Limiter
	// MaxPayload is the largest request payload; default MaxPayload.
	MaxPayload int
	Log        *slog.Logger
}

// Serve answers the requests on conn, one at a time, until the peer closes
// it, a frame cannot be read (answered with an Error first), or ctx ends. It
// closes conn when ctx ends; otherwise the caller does. It never panics on
// anything the peer sends or the handler does.
func Serve(ctx context.Context, conn io.ReadWriteCloser, h Handler, opt ServeOptions) error {
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	for {
		f, err := ReadFrame(conn, opt.MaxPayload)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			var fe *FrameError
			if errors.As(err, &fe) {
				code := CodeMalformed
				switch {
				case errors.Is(err, ErrTooLarge):
					code = CodeTooLarge
				case errors.Is(err, ErrVersion):
					code = CodeUnsupported
				}
				opt.Log.Warn("guest agent sent an unreadable frame: closing the channel", "err", err)
				reply(conn, Frame{Type: TypeError, Seq: 0}, &Error{Code: code, Message: fe.Reason + "; the channel is closed (QEMU reconnects it)"})
			}
			return err
		}
		out, rerr := handle(ctx, f, h, opt)
		resp := Frame{Type: TypeOK, Seq: f.Seq}
		if rerr != nil {
			resp.Type = TypeError
		}
		if err := reply(conn, resp, out, rerr); err != nil {
			return fmt.Errorf("answer %s request: %w", f.Type, err)
		}
	}
}

// reply encodes the result or the error into f's payload and writes it.
func reply(w io.Writer, f Frame, out any, errs ...error) error {
	var payload any = out
	if f.Type == TypeError {
		var e *Error
		if len(errs) > 0 && errs[0] != nil {
			if !errors.As(errs[0], &e) {
				e = &Error{Code: CodeInternal, Message: errs[0].Error()}
			}
		} else if ae, ok := out.(*Error); ok {
			e = ae
		} else {
			e = &Error{Code: CodeInternal, Message: "unknown error"}
		}
		payload = e
	}
	b, err := json.Marshal(payload)
	if err != nil {
		f.Type = TypeError
		b, _ = json.Marshal(&Error{Code: CodeInternal, Message: "encode result: " + err.Error()})
	}
	if len(b) > MaxPayload {
		f.Type = TypeError
		b, _ = json.Marshal(&Error{Code: CodeTooLarge, Message: fmt.Sprintf("the result has %d bytes; the limit is %d", len(b), MaxPayload)})
	}
	f.Payload = b
	return WriteFrame(w, f)
}

// handle runs one request; a handler panic becomes an internal error.
func handle(ctx context.Context, f Frame, h Handler, opt ServeOptions) (out any, err error) {
	defer func() {
		if p := recover(); p != nil {
			opt.Log.Error("guest agent request handler panicked", "type", f.Type.String(), "panic", p)
			out, err = nil, &Error{Code: CodeInternal, Message: "the daemon failed on this request"}
		}
	}()
	decode := func(v any) error {
		p := bytes.TrimSpace(f.Payload)
		if len(p) == 0 {
			p = []byte("{}")
		}
		dec := json.NewDecoder(bytes.NewReader(p))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			return &Error{Code: CodeMalformed, Message: fmt.Sprintf("%s request: %v", f.Type, err)}
		}
		if dec.More() {
			return &Error{Code: CodeMalformed, Message: fmt.Sprintf("%s request: data after the JSON object", f.Type)}
		}
		return nil
	}
	limit := func() error {
		if opt.Limiter == nil {
			return nil
		}
		if ok, wait := opt.Limiter.Allow(); !ok {
			return &Error{Code: CodeRateLimited, Message: fmt.Sprintf("too many program changes from this VM: retry in %v", wait.Round(time.Millisecond))}
		}
		return nil
	}
	switch f.Type {
	case TypeCaps:
		var r struct{}
		if err := decode(&r); err != nil {
			return nil, err
		}
		return h.Caps(ctx)
	case TypeStatus:
		var r struct{}
		if err := decode(&r); err != nil {
			return nil, err
		}
		return h.Status(ctx)
	case TypeSubmit:
		var r SubmitRequest
		if err := decode(&r); err != nil {
			return nil, err
		}
		if err := checkObject(r.Object); err != nil {
			return nil, err
		}
		if err := limit(); err != nil {
			return nil, err
		}
		return h.Submit(ctx, r)
	case TypeReplace:
		var r ReplaceRequest
		if err := decode(&r); err != nil {
			return nil, err
		}
		if r.Expect == 0 {
			return nil, &Error{Code: CodeMalformed, Message: "replace: expect: give the ID of the program the VM runs (see status)"}
		}
		if err := checkObject(r.Object); err != nil {
			return nil, err
		}
		if err := limit(); err != nil {
			return nil, err
		}
		return h.Replace(ctx, r)
	case TypeRemove:
		var r RemoveRequest
		if err := decode(&r); err != nil {
			return nil, err
		}
		if r.Expect == 0 {
			return nil, &Error{Code: CodeMalformed, Message: "remove: expect: give the ID of the program the VM runs (see status)"}
		}
		if err := limit(); err != nil {
			return nil, err
		}
		return h.Remove(ctx, r)
	}
	return nil, &Error{Code: CodeUnsupported, Message: fmt.Sprintf("%s is not a request", f.Type)}
}

func checkObject(obj []byte) error {
	switch {
	case len(obj) == 0:
		return &Error{Code: CodeMalformed, Message: "object: empty; send the compiled program (an ELF object)"}
	case len(obj) > MaxObject:
		return &Error{Code: CodeTooLarge, Message: fmt.Sprintf("object: %d bytes; the limit is %d", len(obj), MaxObject)}
	}
	return nil
}

// TokenBucket is a Limiter: Burst changes at once, then one per Every.
type TokenBucket struct {
	mu     sync.Mutex
	burst  float64
	every  time.Duration
	tokens float64
	last   time.Time
	now    func() time.Time
}

// NewTokenBucket makes a full bucket.
func NewTokenBucket(burst int, every time.Duration) *TokenBucket {
	return &TokenBucket{burst: float64(burst), every: every, tokens: float64(burst), now: time.Now}
}

// SetClock replaces the clock (for tests).
func (b *TokenBucket) SetClock(now func() time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.now, b.last = now, time.Time{}
}

// Allow implements Limiter.
func (b *TokenBucket) Allow() (bool, time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if !b.last.IsZero() && b.every > 0 {
		b.tokens = min(b.burst, b.tokens+float64(now.Sub(b.last))/float64(b.every))
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) * float64(b.every))
}
