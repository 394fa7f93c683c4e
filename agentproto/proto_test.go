package agentproto

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// fakeHandler is one VM with at most one program.
type fakeHandler struct {
	cur   uint64
	next  uint64
	panic bool
}

func (h *fakeHandler) Caps(context.Context) (any, error) {
	if h.panic {
		panic("boom")
	}
	return map[string]any{"version": 1}, nil
}
func (h *fakeHandler) Status(context.Context) (any, error) {
	return map[string]any{"program": h.cur}, nil
}
func (h *fakeHandler) Submit(_ context.Context, r SubmitRequest) (any, error) {
	if h.cur != 0 {
		return nil, &Error{Code: CodeConflict, Message: "the VM runs a program"}
	}
	h.next++
	h.cur = h.next
	return map[string]any{"id": h.cur, "size": len(r.Object)}, nil
}
func (h *fakeHandler) Replace(_ context.Context, r ReplaceRequest) (any, error) {
	if r.Expect != h.cur {
		return nil, &Error{Code: CodeConflict, Message: "stale"}
	}
	h.next++
	h.cur = h.next
	return map[string]any{"id": h.cur}, nil
}
func (h *fakeHandler) Remove(_ context.Context, r RemoveRequest) (any, error) {
	if r.Expect != h.cur {
		return nil, errors.New("plain error")
	}
	h.cur = 0
	return nil, nil
}

// serve runs Serve on one end of a pipe and returns the other and Serve's
// result.
func serve(t *testing.T, h Handler, opt ServeOptions) (net.Conn, <-chan error) {
	t.Helper()
	a, b := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- Serve(context.Background(), a, h, opt); a.Close() }()
	t.Cleanup(func() { b.Close() })
	b.SetDeadline(time.Now().Add(10 * time.Second))
	return b, done
}

func TestRoundTrip(t *testing.T) {
	conn, _ := serve(t, &fakeHandler{}, ServeOptions{})
	c := NewClient(conn)
	ctx := context.Background()
	if caps, err := c.Caps(ctx); err != nil || !strings.Contains(string(caps), `"version":1`) {
		t.Fatalf("caps: %s %v", caps, err)
	}
	res, err := c.Submit(ctx, SubmitRequest{Name: "x", Object: []byte("ELF")})
	if err != nil || !strings.Contains(string(res), `"id":1`) {
		t.Fatalf("submit: %s %v", res, err)
	}
	if _, err := c.Submit(ctx, SubmitRequest{Object: []byte("ELF")}); !IsCode(err, CodeConflict) {
		t.Errorf("second submit: %v", err)
	}
	if _, err := c.Replace(ctx, ReplaceRequest{Expect: 7, Object: []byte("ELF")}); !IsCode(err, CodeConflict) {
		t.Errorf("stale replace: %v", err)
	}
	if _, err := c.Replace(ctx, ReplaceRequest{Object: []byte("ELF")}); !IsCode(err, CodeMalformed) {
		t.Errorf("replace without expect: %v", err)
	}
	if _, err := c.Submit(ctx, SubmitRequest{}); !IsCode(err, CodeMalformed) {
		t.Errorf("empty object: %v", err)
	}
	if _, err := c.Submit(ctx, SubmitRequest{Object: make([]byte, MaxObject+1)}); !IsCode(err, CodeTooLarge) {
		t.Errorf("object over the limit: %v", err)
	}
	if err := c.Remove(ctx, RemoveRequest{Expect: 9}); !IsCode(err, CodeInternal) || !strings.Contains(err.Error(), "plain error") {
		t.Errorf("handler error: %v", err)
	}
	if err := c.Remove(ctx, RemoveRequest{Expect: 1}); err != nil {
		t.Errorf("remove: %v", err)
	}
	if st, err := c.Status(ctx); err != nil || string(st) != `{"program":0}` {
		t.Errorf("status: %s %v", st, err)
	}
}

func frame(t Type, seq uint32, payload string) []byte {
	return AppendFrame(nil, Frame{Type: t, Seq: seq, Payload: []byte(payload)})
}

// Every framing error gets an Error reply naming it, then the channel
// closes; the handler never sees the request.
func TestFramingErrors(t *testing.T) {
	good := frame(TypeCaps, 1, "")
	for _, tc := range []struct {
		name string
		b    []byte
		code string
		says string
	}{
		{"magic", append([]byte("GET / HTTP/1.1\r\n"), good...), CodeMalformed, "magic"},
		{"version", func() []byte { b := bytes.Clone(good); b[4] = 9; return b }(), CodeUnsupported, "version 9"},
		{"type", func() []byte { b := bytes.Clone(good); b[5] = 0x42; return b }(), CodeMalformed, "type"},
		{"reserved", func() []byte { b := bytes.Clone(good); b[7] = 1; return b }(), CodeMalformed, "reserved"},
		{"length", func() []byte { b := bytes.Clone(good); binary.BigEndian.PutUint32(b[12:], 0xffffffff); return b }(), CodeTooLarge, "limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &fakeHandler{panic: true} // a request that got through would panic
			conn, done := serve(t, h, ServeOptions{})
			go conn.Write(tc.b)
			f, err := ReadFrame(conn, 0)
			if err != nil || f.Type != TypeError {
				t.Fatalf("reply %+v %v", f, err)
			}
			var e Error
			json.Unmarshal(f.Payload, &e)
			if e.Code != tc.code || !strings.Contains(e.Message, tc.says) {
				t.Errorf("error %+v, want code %s saying %q", e, tc.code, tc.says)
			}
			select {
			case err := <-done:
				var fe *FrameError
				if !errors.As(err, &fe) {
					t.Errorf("Serve returned %v, want a FrameError", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Serve did not return after a framing error")
			}
		})
	}
}

// A request whose JSON does not decode is answered and the channel stays.
func TestBadJSONKeepsServing(t *testing.T) {
	conn, _ := serve(t, &fakeHandler{}, ServeOptions{})
	for _, p := range []string{"{", `{"object": 5}`, `{"bogus": 1}`, `{} {}`} {
		go conn.Write(frame(TypeSubmit, 3, p))
		f, err := ReadFrame(conn, 0)
		if err != nil || f.Type != TypeError || f.Seq != 3 || !strings.Contains(string(f.Payload), CodeMalformed) {
			t.Errorf("payload %q: %+v %s %v", p, f, f.Payload, err)
		}
	}
	if _, err := NewClient(conn).Caps(context.Background()); err != nil {
		t.Errorf("after bad requests: %v", err)
	}
}

// A lying length allocates nothing: the reader refuses it from the header.
func TestHugeLengthAllocatesNothing(t *testing.T) {
	b := frame(TypeSubmit, 1, "")
	binary.BigEndian.PutUint32(b[12:], MaxPayload+1)
	r := io.MultiReader(bytes.NewReader(b), zeros{})
	allocs := testing.AllocsPerRun(10, func() {
		r := io.MultiReader(bytes.NewReader(b), zeros{})
		ReadFrame(r, 0)
	})
	if _, err := ReadFrame(r, 0); !errors.Is(err, ErrTooLarge) {
		t.Errorf("err %v", err)
	}
	if allocs > 10 {
		t.Errorf("%v allocations to refuse an oversized frame", allocs)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestPanicIsInternal(t *testing.T) {
	conn, _ := serve(t, &fakeHandler{panic: true}, ServeOptions{})
	c := NewClient(conn)
	if _, err := c.Caps(context.Background()); !IsCode(err, CodeInternal) {
		t.Errorf("caps with a panicking handler: %v", err)
	}
	if _, err := c.Status(context.Background()); err != nil {
		t.Errorf("the channel should go on after a handler panic: %v", err)
	}
}

func TestRateLimit(t *testing.T) {
	now := time.Unix(1000, 0)
	tb := NewTokenBucket(2, time.Second)
	tb.SetClock(func() time.Time { return now })
	conn, _ := serve(t, &fakeHandler{}, ServeOptions{Limiter: tb})
	c := NewClient(conn)
	ctx := context.Background()
	if _, err := c.Submit(ctx, SubmitRequest{Object: []byte("a")}); err != nil {
		t.Fatal(err)
	}
	if err := c.Remove(ctx, RemoveRequest{Expect: 1}); err != nil {
		t.Fatal(err)
	}
	_, err := c.Submit(ctx, SubmitRequest{Object: []byte("a")})
	if !IsCode(err, CodeRateLimited) || !strings.Contains(err.Error(), "retry in 1s") {
		t.Fatalf("third change in a burst of 2: %v", err)
	}
	if _, err := c.Status(ctx); err != nil {
		t.Errorf("status is not rate-limited: %v", err)
	}
	now = now.Add(time.Second)
	if _, err := c.Submit(ctx, SubmitRequest{Object: []byte("a")}); err != nil {
		t.Errorf("after a second: %v", err)
	}
}

// Replies to other requests (an agent that was interrupted) are skipped.
func TestClientSkipsStaleReplies(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	a.SetDeadline(time.Now().Add(5 * time.Second))
	c := NewClient(b)
	go func() {
		f, err := ReadFrame(a, 0)
		if err != nil {
			return
		}
		a.Write(frame(TypeOK, f.Seq-1, `"stale"`))
		a.Write(frame(TypeOK, f.Seq, `"mine"`))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := c.Status(ctx)
	if err != nil || string(res) != `"mine"` {
		t.Errorf("%s %v", res, err)
	}
}

func seeds(f *testing.F) {
	obj, _ := json.Marshal(SubmitRequest{Name: "p", Object: []byte("\x7fELF")})
	rep, _ := json.Marshal(ReplaceRequest{Expect: 1, Object: []byte("\x7fELF")})
	for _, b := range [][]byte{
		frame(TypeCaps, 1, ""),
		frame(TypeStatus, 2, "{}"),
		frame(TypeSubmit, 3, string(obj)),
		frame(TypeReplace, 4, string(rep)),
		frame(TypeRemove, 5, `{"expect":1}`),
		append(frame(TypeCaps, 1, ""), frame(TypeSubmit, 2, "{")...),
		frame(TypeOK, 1, "{}"),
		[]byte("XHAG"),
	} {
		f.Add(b)
	}
}

func FuzzReadFrame(f *testing.F) {
	seeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		for i := 0; i < 64; i++ {
			fr, err := ReadFrame(r, 4096)
			if err != nil {
				return
			}
			if len(fr.Payload) > 4096 {
				t.Fatalf("payload of %d bytes over the limit", len(fr.Payload))
			}
			if again, err := ReadFrame(bytes.NewReader(AppendFrame(nil, fr)), 4096); err != nil || again.Seq != fr.Seq || !bytes.Equal(again.Payload, fr.Payload) {
				t.Fatalf("re-encoding %+v: %+v %v", fr, again, err)
			}
		}
	})
}

// rwc is a connection whose input is fixed and whose output is discarded.
type rwc struct {
	io.Reader
	out bytes.Buffer
}

func (c *rwc) Write(p []byte) (int, error) { return c.out.Write(p) }
func (c *rwc) Close() error                { return nil }

// Whatever a guest sends as a whole connection, Serve answers with well-formed
// frames and returns.
func FuzzServe(f *testing.F) {
	seeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		c := &rwc{Reader: bytes.NewReader(b)}
		h := &fakeHandler{}
		Serve(context.Background(), c, h, ServeOptions{Limiter: NewTokenBucket(3, time.Hour), MaxPayload: 4096})
		out := bytes.NewReader(c.out.Bytes())
		for {
			fr, err := ReadFrame(out, 0)
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				t.Fatalf("Serve wrote a malformed frame: %v", err)
			}
			if fr.Type != TypeOK && fr.Type != TypeError {
				t.Fatalf("Serve wrote a %s frame", fr.Type)
			}
		}
	})
}
