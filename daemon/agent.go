package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/xdp-hostd/xdp-hostd/agentproto"
	"github.com/xdp-hostd/xdp-hostd/guestprog"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/unixsock"
)

// Agent submissions a VM may make: a burst, then one per interval.
const (
	agentBurst    = 5
	agentInterval = 2 * time.Second
)

// Agent requests of any kind a VM may make: a burst, then one per
// interval. Over it the channel is not read until a token is back, so a
// guest flooding its channel costs the host a few requests a second.
const (
	agentRequestBurst    = 30
	agentRequestInterval = 100 * time.Millisecond
)

// maxLoggedName is how much of a name a guest gives is logged.
const maxLoggedName = 64

// logName makes a name a guest gave fit for a log line: at most
// maxLoggedName characters, control and other unprintable characters
// (and invalid UTF-8) replaced by '?', the length said if cut.
func logName(s string) string {
	var b strings.Builder
	n := 0
	for _, r := range s {
		if n == maxLoggedName {
			fmt.Fprintf(&b, "...(%d bytes in all)", len(s))
			break
		}
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			r = '?'
		}
		b.WriteRune(r)
		n++
	}
	return b.String()
}

// agentServer serves one VM's guest agent channel: the unix socket that the
// VM's QEMU connects its virtio-serial port (org.xdp-hostd.agent.0) to. The
// VM is the one this socket belongs to: nothing the guest sends names it.
// QEMU holds one connection; a new one (QEMU reconnecting) replaces it.
type agentServer struct {
	d      *Daemon
	vm     string
	path   string
	ln     *unixsock.Listener
	log    *slog.Logger
	limit  *agentproto.TokenBucket // program changes
	reqs   *agentproto.TokenBucket // every request
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	conn net.Conn
}

func (d *Daemon) serveAgent(vm, path string) (*agentServer, error) {
	// claimSocket decided that a stale socket there may be replaced; a
	// live one is never taken over.
	ln, err := unixsock.Listen(path, true)
	if err != nil {
		return nil, fmt.Errorf("VM %s: serve the guest agent channel on %s: %w", vm, path, err)
	}
	os.Chmod(path, 0o660)
	a := &agentServer{d: d, vm: vm, path: path, ln: ln, log: d.log.With("vm", vm, "agent_socket", path),
		limit: agentproto.NewTokenBucket(agentBurst, agentInterval),
		reqs:  agentproto.NewTokenBucket(agentRequestBurst, agentRequestInterval)}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.wg.Add(1)
	go a.accept()
	a.log.Info("serving the guest agent channel")
	return a, nil
}

func (a *agentServer) accept() {
	defer a.wg.Done()
	for {
		c, err := a.ln.Accept()
		if err != nil {
			if a.ctx.Err() == nil {
				a.log.Warn("guest agent channel: accept", "err", err)
			}
			return
		}
		a.mu.Lock()
		if a.conn != nil {
			a.conn.Close() // QEMU reconnected: the old connection is dead
		}
		a.conn = c
		a.mu.Unlock()
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			err := agentproto.Serve(a.ctx, c, agentHandler{a}, agentproto.ServeOptions{Limiter: a.limit, RequestLimiter: a.reqs, Log: a.log})
			if err != nil && a.ctx.Err() == nil {
				a.log.Info("guest agent channel closed", "reason", err)
			}
			c.Close()
		}()
	}
}

// Close stops serving and removes the socket.
func (a *agentServer) Close() error {
	a.cancel()
	a.ln.Close() // removes the socket file (if it is still ours)
	a.mu.Lock()
	if a.conn != nil {
		a.conn.Close()
	}
	a.mu.Unlock()
	a.wg.Wait()
	return nil
}

// agentHandler answers one VM's agent.
type agentHandler struct{ a *agentServer }

// AgentStatus is the status a guest agent gets: its VM's program and
// counters, nothing of other VMs.
type AgentStatus struct {
	VM       string           `json:"vm"`
	Program  *ProgramRecord   `json:"program,omitempty"`
	Ports    []hostnet.Port   `json:"ports"`
	Verdicts hostnet.Verdicts `json:"verdicts"`
}

func (h agentHandler) Caps(ctx context.Context) (any, error) {
	c, err := h.a.d.vmCaps(h.a.vm)
	return c, agentErr(err)
}

func (h agentHandler) Status(ctx context.Context) (any, error) {
	vm, ok := h.a.d.VM(h.a.vm)
	if !ok {
		return nil, agentErr(fmt.Errorf("%w: %q", ErrNoSuchVM, h.a.vm))
	}
	st := AgentStatus{VM: h.a.vm, Ports: vm.Ports()}
	st.Verdicts, _ = vm.Verdicts()
	if id, _ := h.a.d.Programs.Current(h.a.vm); id != 0 {
		if rec, err := h.a.d.Programs.Show(id); err == nil {
			rec.Verdicts = nil
			st.Program = &rec
		}
	}
	return st, nil
}

func (h agentHandler) Submit(ctx context.Context, r agentproto.SubmitRequest) (any, error) {
	rec, err := h.a.d.Programs.Load(h.a.vm, r.Object, r.Entry)
	h.audit("agent_submit", 0, r.Name, rec, err)
	return rec, agentErr(err)
}

func (h agentHandler) Replace(ctx context.Context, r agentproto.ReplaceRequest) (any, error) {
	rec, err := h.a.d.Programs.Replace(h.a.vm, r.Expect, r.Object, r.Entry)
	h.audit("agent_replace", r.Expect, r.Name, rec, err)
	return rec, agentErr(err)
}

func (h agentHandler) Remove(ctx context.Context, r agentproto.RemoveRequest) (any, error) {
	err := h.a.d.Programs.Remove(h.a.vm, r.Expect)
	h.audit("agent_remove", r.Expect, "", nil, err)
	if err != nil {
		return nil, agentErr(err)
	}
	return map[string]any{"removed": r.Expect}, nil
}

func (h agentHandler) audit(event string, expect uint64, name string, rec *ProgramRecord, err error) {
	args := []any{"audit", event, "vm", h.a.vm, "via", "guest agent"}
	if expect != 0 {
		args = append(args, "expect", expect)
	}
	if name != "" {
		args = append(args, "name", logName(name))
	}
	if rec != nil {
		args = append(args, "id", rec.ID)
	}
	if err != nil {
		args = append(args, "result", "refused", "err", err)
	} else {
		args = append(args, "result", "ok")
	}
	h.a.log.Info("audit: "+event, args...)
}

// agentErr maps the registry's errors to the protocol's codes.
func agentErr(err error) error {
	if err == nil {
		return nil
	}
	var refused *guestprog.RefusedError
	var verr *guestprog.VerifierError
	e := &agentproto.Error{Code: "internal", Message: err.Error()}
	switch {
	case errors.As(err, &refused):
		e.Code = "refused"
		for _, v := range refused.Report.Violations {
			e.Detail += v.String() + "\n"
		}
	case errors.As(err, &verr):
		e.Code = "verifier"
		for _, l := range verr.Log {
			e.Detail += l + "\n"
		}
	case errors.Is(err, guestprog.ErrOverQuota):
		e.Code = "refused" // the kernel's figures are over the quota: unloaded
	case errors.Is(err, guestprog.ErrInvalidObject):
		e.Code = "malformed"
	case errors.Is(err, ErrStale), errors.Is(err, ErrHasProgram):
		e.Code = "conflict"
	case errors.Is(err, ErrNoSuchProgram), errors.Is(err, ErrNoSuchVM):
		e.Code = "not_found"
	}
	return e
}
