package vhost

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeHandoff records the device's handoff calls, and at each release
// whether the memory it was given is still mapped (it must be).
type fakeHandoff struct {
	mu     sync.Mutex
	events []string
	held   *MemoryTable
}

func (h *fakeHandoff) TakeRX(pair int, rx HandedRX) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, err := rx.VQ.Pending(); err != nil {
		return err
	}
	h.held = rx.Mem
	h.events = append(h.events, fmt.Sprintf("take %d hdr %d", pair, rx.HeaderLen))
	return nil
}

func (h *fakeHandoff) ReleaseRX(pair int, giveBack bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	mapped := h.held != nil && len(h.held.regions) > 0
	h.events = append(h.events, fmt.Sprintf("release %d giveBack=%v mapped=%v", pair, giveBack, mapped))
}

func (h *fakeHandoff) DeclinedRX(pair int, reason error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, fmt.Sprintf("declined %d: %v", pair, reason))
}

func (h *fakeHandoff) take() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	e := h.events
	h.events = nil
	return e
}

func (h *fakeHandoff) waitFor(t *testing.T, n int) []string {
	t.Helper()
	var got []string
	for deadline := time.Now().Add(5 * time.Second); len(got) < n && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		got = append(got, h.take()...)
	}
	return got
}

// The RX queue is handed off when it starts, taken back (buffers given
// back) before a new memory table replaces the old one and handed again
// after, taken back while dirty pages are logged, at GET_VRING_BASE, and
// (without giving back) before a disconnect unmaps the memory: the memory
// is still mapped at every release. Meanwhile the copy path refuses the
// pair. Shrinkable guest memory is declined with the reason.
func TestRXHandoff(t *testing.T) {
	h := &fakeHandoff{}
	s := startServer(t, NetConfig{RXHandoff: h})
	f := dial(t, s.path)
	f.setup(setupOpts{mem: sealedMemfd(0)})
	check := func(what string, want ...string) {
		t.Helper()
		got := h.waitFor(t, len(want))
		if strings.Join(got, "; ") != strings.Join(want, "; ") {
			t.Errorf("%s: events %q, want %q", what, got, want)
		}
	}
	check("setup", "take 0 hdr 12")
	if !s.dev.HandedOff(0) {
		t.Error("pair 0 not handed off")
	}
	if _, _, err := s.dev.Offer(0, [][]byte{make([]byte, 60)}); !errors.Is(err, ErrHandedOff) {
		t.Errorf("Offer on a handed-off pair: %v, want ErrHandedOff", err)
	}

	memfds := f.g.dupFDs(t)
	f.mustAck(ReqSetMemTable, memTablePayload(f.g.layout()), memfds...)
	closeFDs(memfds)
	check("SET_MEM_TABLE", "release 0 giveBack=true mapped=true", "take 0 hdr 12")

	offered := f.do(ReqGetFeatures, nil)
	f.mustAck(ReqSetFeatures, u64(offered&^FeatureNetMQ))
	check("LOG_ALL on", "release 0 giveBack=true mapped=true")
	f.mustAck(ReqSetFeatures, u64(offered&^(FeatureNetMQ|FeatureLogAll)))
	check("LOG_ALL off", "take 0 hdr 12")

	if err := f.send(ReqGetVringBase, FlagVersion, state(0, 0)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.recv(); err != nil {
		t.Fatal(err)
	}
	check("GET_VRING_BASE", "release 0 giveBack=true mapped=true")
	if s.dev.HandedOff(0) {
		t.Error("pair 0 still handed off after its queue stopped")
	}
	f.close()

	f = dial(t, s.path)
	f.setup(setupOpts{mem: sealedMemfd(0)})
	check("second connection", "take 0 hdr 12")
	f.close()
	check("disconnect", "release 0 giveBack=false mapped=true")

	f = dial(t, s.path)
	f.setup(setupOpts{}) // a memfd that cannot be sealed
	got := h.waitFor(t, 1)
	if len(got) != 1 || !strings.HasPrefix(got[0], "declined 0: ") || !strings.Contains(got[0], "shrink") {
		t.Errorf("shrinkable memory: events %q, want one decline naming shrinking", got)
	}
	f.close()
}
