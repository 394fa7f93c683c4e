package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/agentproto"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
)

// cpuTicks is the CPU time (user and system, in clock ticks of 10 ms) that
// process pid has used.
func cpuTicks(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	u, _ := strconv.Atoi(f[11])
	s, _ := strconv.Atoi(f[12])
	return u + s
}

// A guest flooding its agent channel with status requests for 2 s: the
// replies are bounded by the per-VM request limit, the daemon spends
// little CPU on it, and another VM's agent is still answered at once.
func TestAgentFloodIsCheap(t *testing.T) {
	testnet.RequireRoot(t)
	topo := testnet.Topology(t, 4)
	dir := t.TempDir()
	s1, s2 := filepath.Join(dir, "vm1.agent"), filepath.Join(dir, "vm2.agent")
	p := runDaemonBinary(t, fmt.Sprintf(`{"vm_socket_dirs": [%q], "uplinks": [{"name": %q, "netns": %q, "vms": [
		{"name": "vm1", "mac": "02:00:00:00:00:01", "queues": [1], "agent_socket": %q},
		{"name": "vm2", "mac": "02:00:00:00:00:02", "queues": [2], "agent_socket": %q}]}]}`, dir, topo.Uplink, topo.HostNS, s1, s2))
	defer func() {
		if err := p.stop(t); err != nil {
			t.Errorf("daemon exit: %v\n%s", err, p.stderr.String())
		}
	}()
	c1, err := net.Dial("unix", s1)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c2, err := net.Dial("unix", s2)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.SetDeadline(time.Now().Add(20 * time.Second))

	const flood = 2 * time.Second
	var batch []byte
	for seq := uint32(0); seq < 1000; seq++ {
		batch = agentproto.AppendFrame(batch, agentproto.Frame{Type: agentproto.TypeStatus, Seq: seq})
	}
	before := cpuTicks(t, p.cmd.Process.Pid)
	start := time.Now()
	c1.SetWriteDeadline(start.Add(flood))
	var ok, limited, other atomic.Int64
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		c1.SetReadDeadline(start.Add(flood + 5*time.Second))
		for {
			f, err := agentproto.ReadFrame(c1, 0)
			if err != nil {
				return
			}
			switch {
			case f.Type == agentproto.TypeOK:
				ok.Add(1)
			case strings.Contains(string(f.Payload), agentproto.CodeRateLimited):
				limited.Add(1)
			default:
				other.Add(1)
			}
		}
	}()
	writeDone := make(chan error, 1)
	go func() {
		for {
			if _, err := c1.Write(batch); err != nil {
				writeDone <- err
				return
			}
		}
	}()
	// Meanwhile vm2's agent is answered at once.
	time.Sleep(flood / 2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	t0 := time.Now()
	_, err = agentproto.NewClient(c2).Status(ctx)
	cancel()
	if err != nil {
		t.Errorf("vm2's agent during vm1's flood: %v", err)
	} else if d := time.Since(t0); d > time.Second {
		t.Errorf("vm2's agent answered after %v during vm1's flood", d)
	}
	if err := <-writeDone; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("flood writer: %v", err)
	}
	spent := cpuTicks(t, p.cmd.Process.Pid) - before
	c1.Close()
	<-readDone
	// At most the burst and the rate over the flood, and one refusal per
	// token interval.
	maxOK := int64(30 + 10*flood/time.Second + 5)
	t.Logf("in %v: %d answers, %d rate_limited, %d other; the daemon used %d ms of CPU", flood, ok.Load(), limited.Load(), other.Load(), spent*10)
	if ok.Load() > maxOK || limited.Load() > maxOK || other.Load() != 0 {
		t.Errorf("%d answers, %d rate_limited, %d other replies to a flood of %v; want at most %d of each and no other", ok.Load(), limited.Load(), other.Load(), flood, maxOK)
	}
	if ok.Load() < 30 {
		t.Errorf("only %d answers: the burst should be served", ok.Load())
	}
	if spent > 30 {
		t.Errorf("the daemon used %d ms of CPU on a %v flood; want at most 300 ms", spent*10, flood)
	}
}
