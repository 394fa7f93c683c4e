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

// Limiter rate-limits requests.
type Limiter interface {
	// Allow takes a token; if there is none it says how long until one.
	Allow() (ok bool, retryAfter time.Duration)
}

// ServeOptions configure Serve.
type ServeOptions struct {
	// Limiter applies to Submit, Replace and Remove, before their payload
	// is decoded; nil: no limit. Give each VM one Limiter that outlives
	// its connections.
	Limiter Limiter
	// RequestLimiter applies to every request, before anything else is
	// done with it; nil: no limit. A request over it is answered
	// "rate_limited" and Serve then reads nothing until the limiter has a
	// token again: a peer that floods the channel is slowed to the
	// limiter's rate (its writes block), so the flood costs the host
	// little. Give each VM one that outlives its connections.
	RequestLimiter Limiter
	// MaxPayload is the largest request payload; default MaxPayload.
	MaxPayload int
	Log        *slog.Logger
}

// Serve answers the requests on conn, one at a time, until the peer closes
// it (Serve returns nil), a frame cannot be read (answered with an Error
// first; Serve returns the *FrameError), a reply cannot be written, or ctx
// ends (Serve closes conn and returns ctx.Err()). Otherwise the caller
// closes conn. It never panics on anything the peer sends or the handler
// does: a handler panic is answered as CodeInternal.
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
				case errors.Is(err, ErrVersion), errors.Is(err, ErrType):
					code = CodeUnsupported
				}
				opt.Log.Warn("guest agent sent an unreadable frame: closing the channel", "err", err)
				// Best effort: the peer may be gone (a truncated frame).
				writeReply(conn, f.Seq, TypeError, mustJSON(&Error{Code: code, Message: fe.Reason + "; the channel is closed (QEMU reconnects it)"}))
			}
			return err
		}
		if opt.RequestLimiter != nil {
			if ok, wait := opt.RequestLimiter.Allow(); !ok {
				if err := writeReply(conn, f.Seq, TypeError, mustJSON(&Error{Code: CodeRateLimited,
					Message: fmt.Sprintf("too many requests from this VM: send one at a time and retry in %v", wait.Round(time.Millisecond))})); err != nil {
					return fmt.Errorf("answer %s request %d: %w", f.Type, f.Seq, err)
				}
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return ctx.Err()
				case <-t.C:
				}
				continue
			}
		}
		t, payload := handle(ctx, f, h, opt)
		if err := writeReply(conn, f.Seq, t, payload); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("answer %s request %d: %w", f.Type, f.Seq, err)
		}
	}
}

func writeReply(w io.Writer, seq uint32, t Type, payload []byte) error {
	return WriteFrame(w, Frame{Type: t, Seq: seq, Payload: payload})
}

// mustJSON encodes an *Error, which cannot fail.
func mustJSON(e *Error) []byte {
	b, _ := json.Marshal(e)
	return b
}

// encode makes the reply to a request from the handler's result: an OK
// frame with the result as JSON, or an Error frame.
func encode(out any, err error) (Type, []byte) {
	if err != nil {
		var e *Error
		if !errors.As(err, &e) || e == nil {
			e = &Error{Code: CodeInternal, Message: err.Error()}
		} else if e.Code == "" {
			c := *e
			c.Code = CodeInternal
			e = &c
		}
		return TypeError, mustJSON(e)
	}
	b, err := json.Marshal(out)
	if err != nil {
		return TypeError, mustJSON(&Error{Code: CodeInternal, Message: "encode the result: " + err.Error()})
	}
	if len(b) > MaxPayload {
		return TypeError, mustJSON(&Error{Code: CodeTooLarge, Message: fmt.Sprintf("the result has %d bytes; the limit is %d", len(b), MaxPayload)})
	}
	return TypeOK, b
}

// handle runs one request and encodes its reply; a panic in the handler
// (or in encoding its result) becomes an internal error.
func handle(ctx context.Context, f Frame, h Handler, opt ServeOptions) (t Type, payload []byte) {
	defer func() {
		if p := recover(); p != nil {
			opt.Log.Error("guest agent request handler panicked", "type", f.Type.String(), "seq", f.Seq, "panic", p)
			t, payload = TypeError, mustJSON(&Error{Code: CodeInternal, Message: "the daemon failed on this " + f.Type.String() + " request"})
		}
	}()
	return encode(dispatch(ctx, f, h, opt))
}

// dispatch decodes, checks and rate-limits one request and runs its handler.
func dispatch(ctx context.Context, f Frame, h Handler, opt ServeOptions) (any, error) {
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
		if err := limit(); err != nil {
			return nil, err
		}
		var r SubmitRequest
		if err := decode(&r); err != nil {
			return nil, err
		}
		if err := checkObject(r.Object); err != nil {
			return nil, err
		}
		return h.Submit(ctx, r)
	case TypeReplace:
		if err := limit(); err != nil {
			return nil, err
		}
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
		return h.Replace(ctx, r)
	case TypeRemove:
		if err := limit(); err != nil {
			return nil, err
		}
		var r RemoveRequest
		if err := decode(&r); err != nil {
			return nil, err
		}
		if r.Expect == 0 {
			return nil, &Error{Code: CodeMalformed, Message: "remove: expect: give the ID of the program the VM runs (see status)"}
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

// TokenBucket is a Limiter: Burst changes at once, then one per Every. It
// is safe for concurrent use.
type TokenBucket struct {
	mu     sync.Mutex
	burst  float64
	every  time.Duration
	tokens float64
	last   time.Time
	now    func() time.Time
}

// NewTokenBucket makes a full bucket of burst tokens (at least 1) that
// gains one every interval. An every <= 0 means no limit.
func NewTokenBucket(burst int, every time.Duration) *TokenBucket {
	burst = max(burst, 1)
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
	if b.every <= 0 {
		return true, 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if !b.last.IsZero() && now.After(b.last) {
		b.tokens = min(b.burst, b.tokens+float64(now.Sub(b.last))/float64(b.every))
	}
	if b.last.IsZero() || now.After(b.last) {
		b.last = now // a clock that steps back earns nothing
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) * float64(b.every))
}
