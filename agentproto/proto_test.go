package agentproto

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
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
	if r.Name == "panic" {
		panic("submit")
	}
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
		seq  uint32
		kind error
	}{
		{"magic", append([]byte("GET / HTTP/1.1\r\n"), good...), CodeMalformed, "magic", 0, ErrBadMagic},
		{"version", func() []byte { b := bytes.Clone(good); b[4] = 9; return b }(), CodeUnsupported, "version 9", 0, ErrVersion},
		{"type", func() []byte { b := bytes.Clone(good); b[5] = 0x42; return b }(), CodeUnsupported, "type", 1, ErrType},
		{"reserved", func() []byte { b := bytes.Clone(good); b[7] = 1; return b }(), CodeMalformed, "reserved", 1, ErrReserved},
		{"length", func() []byte { b := bytes.Clone(good); binary.BigEndian.PutUint32(b[12:], 0xffffffff); return b }(), CodeTooLarge, "limit", 1, ErrTooLarge},
		{"truncated header", good[:9], CodeMalformed, "header", 0, io.ErrUnexpectedEOF},
		{"truncated payload", frame(TypeSubmit, 1, "{}")[:17], CodeMalformed, "payload", 1, io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &fakeHandler{panic: true} // a request that got through would panic
			// The input is followed by a good request, which must not be
			// answered: Serve stops at the first framing error.
			c := &rwc{Reader: io.MultiReader(bytes.NewReader(tc.b), bytes.NewReader(good))}
			if tc.kind == io.ErrUnexpectedEOF {
				c.Reader = bytes.NewReader(tc.b)
			}
			err := Serve(context.Background(), c, h, ServeOptions{})
			var fe *FrameError
			if !errors.As(err, &fe) || !errors.Is(err, tc.kind) {
				t.Errorf("Serve returned %v, want a FrameError matching %v", err, tc.kind)
			}
			out := bytes.NewReader(c.out.Bytes())
			f, err := ReadFrame(out, 0)
			if err != nil || f.Type != TypeError || f.Seq != tc.seq {
				t.Fatalf("reply %+v %v, want an Error with seq %d", f, err, tc.seq)
			}
			var e Error
			if err := json.Unmarshal(f.Payload, &e); err != nil {
				t.Fatal(err)
			}
			if e.Code != tc.code || !strings.Contains(e.Message, tc.says) {
				t.Errorf("error %+v, want code %s saying %q", e, tc.code, tc.says)
			}
			if out.Len() != 0 {
				t.Errorf("%d more bytes after the error reply", out.Len())
			}
		})
	}
}

// Over a real connection, Serve closes the channel after a framing error.
func TestFramingErrorOverPipe(t *testing.T) {
	conn, done := serve(t, &fakeHandler{}, ServeOptions{})
	go conn.Write([]byte("SSH-2.0-OpenSSH_9.6\r\n"))
	if f, err := ReadFrame(conn, 0); err != nil || f.Type != TypeError {
		t.Fatalf("reply %+v %v", f, err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrBadMagic) {
			t.Errorf("Serve returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after a framing error")
	}
	if _, err := ReadFrame(conn, 0); err == nil {
		t.Error("the channel stayed open")
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

// A lying length allocates nothing: the reader refuses it from the header,
// without reading on into the endless stream behind it.
func TestHugeLengthAllocatesNothing(t *testing.T) {
	for _, n := range []uint32{MaxPayload + 1, 1 << 30, 0xffffffff} {
		b := frame(TypeSubmit, 1, "")
		binary.BigEndian.PutUint32(b[12:], n)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range 10 {
			_, err := ReadFrame(io.MultiReader(bytes.NewReader(b), zeros{}), 0)
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("length %d: %v", n, err)
			}
		}
		runtime.ReadMemStats(&after)
		if d := after.TotalAlloc - before.TotalAlloc; d > 64<<10 {
			t.Errorf("length %d: %d bytes allocated to refuse 10 frames", n, d)
		}
	}
	// With a smaller limit, a length between it and MaxPayload is refused too.
	b := frame(TypeSubmit, 1, "")
	binary.BigEndian.PutUint32(b[12:], 4097)
	if _, err := ReadFrame(io.MultiReader(bytes.NewReader(b), zeros{}), 4096); !errors.Is(err, ErrTooLarge) {
		t.Errorf("over a limit of 4096: %v", err)
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

// Every request counts against RequestLimiter: over it the reply is
// rate_limited and nothing is read until a token is back (a pipelining
// peer waits), then requests are served again.
func TestRequestLimit(t *testing.T) {
	conn, _ := serve(t, &fakeHandler{}, ServeOptions{RequestLimiter: NewTokenBucket(2, 200*time.Millisecond)})
	// Four requests at once: two served, the third refused, the fourth
	// read only once a token is back.
	var b []byte
	for seq := uint32(1); seq <= 4; seq++ {
		b = append(b, frame(TypeStatus, seq, "")...)
	}
	go conn.Write(b)
	start := time.Now()
	var got []string
	for i := 0; i < 4; i++ {
		f, err := ReadFrame(conn, 0)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%d:%s", f.Seq, f.Type))
		if f.Seq == 3 && !strings.Contains(string(f.Payload), `"code":"rate_limited"`) {
			t.Errorf("third request: %s", f.Payload)
		}
	}
	if fmt.Sprint(got) != "[1:ok 2:ok 3:error 4:ok]" {
		t.Errorf("replies %v", got)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("the request after a refused one was served after %v, before a token was back", d)
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

func TestServeReturnsOnCancel(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, a, &fakeHandler{}, ServeOptions{}) }()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Serve returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return on cancel")
	}
	b.SetDeadline(time.Now().Add(time.Second))
	if _, err := b.Write([]byte("x")); err == nil {
		t.Error("conn still open after cancel")
	}
}

type badResult struct{}

func (badResult) MarshalJSON() ([]byte, error) { panic("marshal") }

type resultHandler struct {
	fakeHandler
	out any
	err error
}

func (h *resultHandler) Status(context.Context) (any, error) { return h.out, h.err }

// Results that cannot be encoded, and errors without a code, still get a
// well-formed reply.
func TestOddResults(t *testing.T) {
	for _, tc := range []struct {
		out  any
		err  error
		code string
	}{
		{badResult{}, nil, CodeInternal},
		{make(chan int), nil, CodeInternal},
		{strings.Repeat("a", MaxPayload), nil, CodeTooLarge},
		{nil, (*Error)(nil), CodeInternal},
		{nil, &Error{Message: "no code"}, CodeInternal},
		{nil, fmt.Errorf("wrapped: %w", &Error{Code: CodeNotFound, Message: "gone"}), CodeNotFound},
	} {
		conn, _ := serve(t, &resultHandler{out: tc.out, err: tc.err}, ServeOptions{})
		if _, err := NewClient(conn).Status(context.Background()); !IsCode(err, tc.code) {
			t.Errorf("%T %v: %v, want %s", tc.out, tc.err, err, tc.code)
		}
	}
}

func TestClientHonoursContext(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go io.Copy(io.Discard, a) // a daemon that never answers
	c := NewClient(b)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.Caps(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("deadline: %v", err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, err := c.Caps(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("cancel: %v", err)
	}
	if _, err := c.Caps(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled before: %v", err)
	}
}

func TestClientGivesUpOnEndlessStaleReplies(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() {
		f, err := ReadFrame(a, 0)
		if err != nil {
			return
		}
		for i := range uint32(100) {
			if _, err := a.Write(frame(TypeOK, f.Seq+1+i, "{}")); err != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := NewClient(b).Status(ctx); err == nil || !strings.Contains(err.Error(), "other requests") {
		t.Errorf("%v", err)
	}
}

func TestTokenBucket(t *testing.T) {
	now := time.Unix(1000, 0)
	var mu sync.Mutex
	tb := NewTokenBucket(3, 10*time.Second)
	tb.SetClock(func() time.Time { mu.Lock(); defer mu.Unlock(); return now })
	var wg sync.WaitGroup
	var allowed sync.Map
	for i := range 20 {
		wg.Go(func() {
			if ok, _ := tb.Allow(); ok {
				allowed.Store(i, true)
			}
		})
	}
	wg.Wait()
	n := 0
	allowed.Range(func(any, any) bool { n++; return true })
	if n != 3 {
		t.Errorf("%d allowed of a burst of 3", n)
	}
	if ok, wait := tb.Allow(); ok || wait != 10*time.Second {
		t.Errorf("empty: %v %v", ok, wait)
	}
	mu.Lock()
	now = now.Add(4 * time.Second)
	mu.Unlock()
	if ok, wait := tb.Allow(); ok || wait != 6*time.Second {
		t.Errorf("after 4s: %v %v", ok, wait)
	}
	mu.Lock()
	now = now.Add(time.Hour)
	mu.Unlock()
	for i := range 4 {
		if ok, _ := tb.Allow(); ok != (i < 3) {
			t.Errorf("after an hour, change %d: %v", i, ok)
		}
	}
	unlimited := NewTokenBucket(1, 0)
	for range 100 {
		if ok, _ := unlimited.Allow(); !ok {
			t.Fatal("every <= 0 should not limit")
		}
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
		frame(TypeError, 1, `{"code":"internal","message":"x"}`),
		append(frame(TypeStatus, 1, ""), 0x58, 0x48, 0x41, 0x47, 1, 0x42, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0),
		frame(TypeRemove, 6, `{"expect":1,"bogus":true}`),
		frame(TypeSubmit, 7, `{"name":"panic","object":"eA=="}`),
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
