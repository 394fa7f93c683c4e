package daemon

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/agentproto"
	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
)

// shortAPITimeouts makes the API's timeouts short for a test.
func shortAPITimeouts(t *testing.T, d time.Duration) {
	old := []time.Duration{apiReadHeaderTimeout, apiReadTimeout, apiWriteTimeout, apiIdleTimeout}
	apiReadHeaderTimeout, apiReadTimeout, apiWriteTimeout, apiIdleTimeout = d, d, 2*d, d
	t.Cleanup(func() {
		apiReadHeaderTimeout, apiReadTimeout, apiWriteTimeout, apiIdleTimeout = old[0], old[1], old[2], old[3]
	})
}

// rawRequest sends raw bytes on a new connection to the API socket and
// returns the status and body of the answer.
func rawRequest(t *testing.T, sock, req string) (int, string) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func post(path, ctype, body string) string {
	h := ""
	if ctype != "" {
		h = "Content-Type: " + ctype + "\r\n"
	}
	return fmt.Sprintf("POST %s HTTP/1.1\r\nHost: xdp-hostd\r\n%sContent-Length: %d\r\nConnection: close\r\n\r\n%s", path, h, len(body), body)
}

// closedWithin reports how long the server took to close c (reading
// until EOF), failing past limit.
func closedWithin(t *testing.T, c net.Conn, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, c)
	d := time.Since(start)
	if err != nil {
		t.Errorf("the connection was still open after %v: %v", d, err)
	}
	return d
}

// The API socket of a live daemon: a stalled body and an idle keep-alive
// lose their connection after the timeouts; trailing data after the JSON
// body is refused (400) and so is a body that is not JSON as a media type
// (415); neither adds anything.
func TestAPIHardening(t *testing.T) {
	shortAPITimeouts(t, time.Second)
	topo := testnet.Topology(t, 4)
	d, sock := startServing(t, &Config{Uplinks: []UplinkConfig{{Name: topo.Uplink, NetNS: topo.HostNS}}}, quiet)
	vm := fmt.Sprintf(`{"uplink": %q, "vm": {"name": "vm1", "mac": "02:00:00:00:00:01"}}`, topo.Uplink)

	t.Run("stalled body", func(t *testing.T) {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "POST /v1/vms HTTP/1.1\r\nHost: xdp-hostd\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"uplink\":")
		if d := closedWithin(t, c, 5*time.Second); d < 500*time.Millisecond {
			t.Errorf("closed after %v, before the read timeout", d)
		}
	})
	t.Run("idle keep-alive", func(t *testing.T) {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET /v1/vms HTTP/1.1\r\nHost: xdp-hostd\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		start := time.Now()
		c.SetReadDeadline(start.Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, br); err != nil {
			t.Errorf("the idle connection was still open after %v: %v", time.Since(start), err)
		}
	})
	for _, tc := range []struct {
		name, req string
		code      int
		says      string
	}{
		{"trailing junk", post("/v1/vms", "application/json", vm+"junk"), 400, "data after the JSON object"},
		{"a second object", post("/v1/vms", "application/json", vm+vm), 400, "data after the JSON object"},
		{"unknown field", post("/v1/vms", "application/json", strings.Replace(vm, `"uplink"`, `"upl1nk": 1, "uplink"`, 1)), 400, `unknown field \"upl1nk\"`},
		{"no content type", post("/v1/vms", "", vm), 415, "takes Content-Type: application/json"},
		{"form content type", post("/v1/vms", "application/x-www-form-urlencoded", vm), 415, `Content-Type \"application/x-www-form-urlencoded\"`},
		{"batch as text", post("/v1/vm-batch", "text/plain", `{"vms": [`+vm+`]}`), 415, "application/json"},
		{"object as JSON", post("/v1/vms/vm1/program", "application/json", "\x7fELF"), 415, "application/octet-stream"},
		{"huge body", post("/v1/vms", "application/json", `{"uplink": "`+strings.Repeat("a", apiMaxJSONBody)+`"}`), 400, "larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := rawRequest(t, sock, tc.req)
			if code != tc.code || !strings.Contains(body, tc.says) {
				t.Errorf("%d %s, want %d saying %q", code, body, tc.code, tc.says)
			}
		})
	}
	if vms := d.Dataplanes()[0].VMs(); len(vms) != 0 {
		t.Errorf("refused requests added %d VMs", len(vms))
	}
	// The same request done right is accepted.
	if code, body := rawRequest(t, sock, post("/v1/vms", "application/json; charset=utf-8", vm)); code != 201 {
		t.Errorf("a good request: %d %s", code, body)
	}
}

// A program name a guest agent gives is logged cut to a bounded length,
// without control characters.
func TestAgentNameInLogs(t *testing.T) {
	topo := testnet.Topology(t, 4)
	dir := t.TempDir()
	sock := filepath.Join(dir, "vm1.agent")
	var logs syncBuf
	log := slog.New(slog.NewTextHandler(&logs, nil))
	d, err := Start(&Config{VMSocketDirs: []string{dir}, Uplinks: []UplinkConfig{{Name: topo.Uplink, NetNS: topo.HostNS, VMs: []VMConfig{
		{Name: "vm1", MAC: "02:00:00:00:01:01", Queues: []int{1}, AgentSocket: sock}}}}}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	_, a := dialAgent(t, sock)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := "filter\x1b[2J\r\nlevel=ERROR msg=forged" + strings.Repeat("x", 500_000)
	a.Submit(ctx, agentproto.SubmitRequest{Name: name, Object: guest(t, "pass")})
	var line string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "audit=agent_submit") {
			line = l
		}
	}
	if line == "" {
		t.Fatalf("no audit line for the submission:\n%.2000s", logs.String())
	}
	if len(line) > 1000 {
		t.Errorf("the audit line has %d bytes: %.300s...", len(line), line)
	}
	if strings.Contains(line, `\x1b`) || strings.Contains(line, `\r`) || strings.Contains(line, `\n`) || !strings.Contains(line, "filter?[2J??level=ERROR") || !strings.Contains(line, "bytes in all") {
		t.Errorf("the name is not sanitized and cut: %s", line)
	}
}

// syncBuf is a buffer a logger writes while the test reads it.
type syncBuf = testnet.SyncBuffer

// A batch of VMs reaches the state in one write when it is complete: a
// daemon dying mid-way brings none of it back. One whose caller gives up
// mid-way is undone and never written.
func TestBatchIsOneStateWrite(t *testing.T) {
	topo := testnet.Topology(t, 4)
	dir := t.TempDir()
	d, err := Start(&Config{StateDir: dir, Uplinks: []UplinkConfig{{Name: topo.Uplink, NetNS: topo.HostNS}}}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	batch := func(prefix string, n int) []AddVMRequest {
		var reqs []AddVMRequest
		for i := 0; i < n; i++ {
			reqs = append(reqs, AddVMRequest{Uplink: topo.Uplink, VM: VMConfig{Name: fmt.Sprintf("%s%d", prefix, i), MAC: fmt.Sprintf("02:00:00:00:%02x:%02x", len(prefix), i)}})
		}
		return reqs
	}
	// inState counts the VMs named prefix* in state.json now.
	inState := func(prefix string) int {
		st, err := os.ReadFile(filepath.Join(dir, "state.json"))
		if err != nil {
			return 0
		}
		return strings.Count(string(st), `"name": "`+prefix)
	}
	// watch returns the most VMs named prefix* the state held at once,
	// short of all n of them, until stop is called.
	watch := func(prefix string, n int) (stop func() int) {
		done, seen := make(chan struct{}), make(chan int)
		go func() {
			most := 0
			for {
				select {
				case <-done:
					seen <- most
					return
				case <-time.After(time.Millisecond):
					if c := inState(prefix); c < n {
						most = max(most, c)
					}
				}
			}
		}()
		return func() int { close(done); return <-seen }
	}

	stop := watch("b", 20)
	if _, err := d.AddVMs(context.Background(), batch("b", 20)); err != nil {
		t.Fatal(err)
	}
	if n := stop(); n != 0 {
		t.Errorf("while the batch ran, the state held %d of its VMs", n)
	}
	if n := inState("b"); n != 20 {
		t.Errorf("after the batch, the state holds %d of its 20 VMs", n)
	}

	stop = watch("cc", 200)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err = d.AddVMs(ctx, batch("cc", 200))
	if n := stop(); err == nil || n != 0 {
		t.Errorf("a batch given up on: %v; the state held %d of its VMs", err, n)
	}
	if n := len(d.Dataplanes()[0].VMs()); n != 20 || inState("cc") != 0 {
		t.Errorf("after a batch given up on: %d VMs (want the first batch's 20), %d in the state", n, inState("cc"))
	}
}
