package daemon

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/agentproto"
	hostbpf "github.com/xdp-hostd/xdp-hostd/bpf"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
)

// dialAgent connects to a VM's agent socket as QEMU does.
func dialAgent(t *testing.T, path string) (net.Conn, *agentproto.Client) {
	t.Helper()
	var c net.Conn
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err = net.Dial("unix", path); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c, agentproto.NewClient(c)
}

// Two VMs' agent channels against a running daemon: each agent manages its
// own VM's program and cannot see or touch the other's; malformed and
// oversized frames get an error, the channel closes and the next
// connection is served; changes are rate-limited per VM.
func TestAgentChannels(t *testing.T) {
	topo := testnet.Topology(t, 4)
	dir := t.TempDir()
	s1, s2 := filepath.Join(dir, "vm1.agent"), filepath.Join(dir, "vm2.agent")
	cfg := &Config{VMSocketDirs: []string{dir}, Uplinks: []UplinkConfig{{Name: topo.Uplink, NetNS: topo.HostNS, VMs: []VMConfig{
		{Name: "vm1", MAC: "02:00:00:00:01:01", Queues: []int{1}, AgentSocket: s1},
		{Name: "vm2", MAC: "02:00:00:00:01:02", Queues: []int{2}, AgentSocket: s2},
	}}}}
	d, err := Start(cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ddos, err := hostbpf.Example("ddos_filter")
	if err != nil {
		t.Fatal(err)
	}
	_, a1 := dialAgent(t, s1)
	_, a2 := dialAgent(t, s2)

	raw, err := a1.Caps(ctx)
	if err != nil || !strings.Contains(string(raw), `"vm":"vm1"`) {
		t.Fatalf("caps: %s %v", raw, err)
	}
	raw, err = a1.Submit(ctx, agentproto.SubmitRequest{Name: "ddos", Object: ddos})
	if err != nil {
		t.Fatal(err)
	}
	var rec ProgramRecord
	json.Unmarshal(raw, &rec)
	if rec.ID == 0 || rec.VM != "vm1" {
		t.Fatalf("submit: %s", raw)
	}
	if cur, _ := d.Programs.Current("vm1"); cur != rec.ID {
		t.Errorf("vm1 runs %d, the agent was told %d", cur, rec.ID)
	}
	if _, err := a1.Submit(ctx, agentproto.SubmitRequest{Object: []byte("\x7fELF not really")}); !agentproto.IsCode(err, agentproto.CodeMalformed) && !agentproto.IsCode(err, agentproto.CodeConflict) {
		t.Errorf("junk object: %v", err)
	}

	// vm2's agent sees only vm2, and cannot touch vm1's program.
	raw, err = a2.Status(ctx)
	if err != nil || strings.Contains(string(raw), `"vm1"`) || strings.Contains(string(raw), `"program"`) {
		t.Errorf("vm2's status: %s %v", raw, err)
	}
	if _, err := a2.Replace(ctx, agentproto.ReplaceRequest{Expect: rec.ID, Object: ddos}); !agentproto.IsCode(err, agentproto.CodeConflict) {
		t.Errorf("vm2 replacing vm1's program: %v", err)
	}
	if err := a2.Remove(ctx, agentproto.RemoveRequest{Expect: rec.ID}); !agentproto.IsCode(err, agentproto.CodeConflict) {
		t.Errorf("vm2 removing vm1's program: %v", err)
	}
	if cur, _ := d.Programs.Current("vm1"); cur != rec.ID {
		t.Fatalf("vm1's program changed to %d through vm2's agent", cur)
	}

	// Replace and remove through vm1's own agent.
	raw, err = a1.Replace(ctx, agentproto.ReplaceRequest{Expect: rec.ID, Object: guest(t, "pass")})
	if err != nil {
		t.Fatal(err)
	}
	var rec2 ProgramRecord
	json.Unmarshal(raw, &rec2)
	if rec2.ID <= rec.ID {
		t.Errorf("replace: %s", raw)
	}
	raw, err = a1.Status(ctx)
	if err != nil || !strings.Contains(string(raw), `"id":`+jsonNum(rec2.ID)) {
		t.Errorf("vm1's status: %s %v", raw, err)
	}
	if err := a1.Remove(ctx, agentproto.RemoveRequest{Expect: rec2.ID}); err != nil {
		t.Fatal(err)
	}

	// Garbage, then an oversized frame: each gets an error and closes the
	// channel; a new connection (QEMU reconnecting) is served.
	for _, bad := range [][]byte{
		[]byte("this is not a frame at all, not even close"),
		func() []byte {
			b := agentproto.AppendFrame(nil, agentproto.Frame{Type: agentproto.TypeSubmit, Seq: 9})
			binary.BigEndian.PutUint32(b[12:], 1<<30)
			return b
		}(),
	} {
		c, _ := dialAgent(t, s1)
		if _, err := c.Write(bad); err != nil {
			t.Fatal(err)
		}
		f, err := agentproto.ReadFrame(c, 0)
		if err != nil || f.Type != agentproto.TypeError {
			t.Fatalf("reply to a bad frame: %+v %v", f, err)
		}
		var e agentproto.Error
		json.Unmarshal(f.Payload, &e)
		if e.Code != agentproto.CodeMalformed && e.Code != agentproto.CodeTooLarge {
			t.Errorf("bad frame: %+v", e)
		}
		if _, err := agentproto.ReadFrame(c, 0); err == nil {
			t.Error("the channel stayed open after a bad frame")
		}
		_, again := dialAgent(t, s1)
		if _, err := again.Caps(ctx); err != nil {
			t.Fatalf("after a bad frame, a new connection: %v", err)
		}
	}

	// Rate limit: a burst, then refusals; vm2 is not affected.
	_, a3 := dialAgent(t, s1)
	limited := false
	for i := 0; i < agentBurst+3 && !limited; i++ {
		raw, err := a3.Submit(ctx, agentproto.SubmitRequest{Object: guest(t, "pass")})
		if agentproto.IsCode(err, agentproto.CodeRateLimited) {
			limited = true
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var r ProgramRecord
		json.Unmarshal(raw, &r)
		if err := a3.Remove(ctx, agentproto.RemoveRequest{Expect: r.ID}); agentproto.IsCode(err, agentproto.CodeRateLimited) {
			limited = true
		}
	}
	if !limited {
		t.Error("no rate limit after a burst of changes")
	}
	if _, err := a2.Submit(ctx, agentproto.SubmitRequest{Object: guest(t, "pass")}); err != nil {
		t.Errorf("vm2 limited by vm1's changes: %v", err)
	}
}

func jsonNum(n uint64) string {
	b, _ := json.Marshal(n)
	return string(b)
}
