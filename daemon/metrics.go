package daemon

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
)

// programCounters count what the registry accepted and refused.
type programCounters struct {
	mu       sync.Mutex
	loaded   uint64
	rejected map[string]uint64 // by rule, or "verifier"
}

func (c *programCounters) load() {
	c.mu.Lock()
	c.loaded++
	c.mu.Unlock()
}

func (c *programCounters) reject(reason string) {
	c.mu.Lock()
	if c.rejected == nil {
		c.rejected = map[string]uint64{}
	}
	c.rejected[reason]++
	c.mu.Unlock()
}

// Metrics serves the daemon's counters in the Prometheus text format.
type Metrics struct {
	srv *http.Server
	ln  net.Listener
}

// ServeMetrics listens on addr, which must be a loopback address: the
// counters describe VMs and are not for the network.
func ServeMetrics(d *Daemon, addr string) (*Metrics, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("metrics address %q: %w (use e.g. 127.0.0.1:9464)", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("metrics address %q: use a loopback address such as 127.0.0.1:9464", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		bw := bufio.NewWriter(w)
		d.writeMetrics(bw)
		bw.Flush()
	})
	m := &Metrics{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
	go m.srv.Serve(ln)
	return m, nil
}

// Addr is where the metrics are served.
func (m *Metrics) Addr() string { return m.ln.Addr().String() }

// Close stops serving.
func (m *Metrics) Close() error { return m.srv.Close() }

type metricWriter struct {
	w    *bufio.Writer
	seen map[string]bool
}

func (mw *metricWriter) sample(name, help, typ string, labels map[string]string, v uint64) {
	if !mw.seen[name] {
		mw.seen[name] = true
		fmt.Fprintf(mw.w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%q", k, labels[k])
	}
	if b.Len() == 0 {
		fmt.Fprintf(mw.w, "%s %d\n", name, v)
		return
	}
	fmt.Fprintf(mw.w, "%s{%s} %d\n", name, b.String(), v)
}

func (d *Daemon) writeMetrics(w *bufio.Writer) {
	mw := &metricWriter{w: w, seen: map[string]bool{}}
	for _, dp := range d.Dataplanes() {
		up, _, _ := dp.Uplink()
		if st, err := dp.Stats(); err == nil {
			for what, c := range map[string]hostnet.Count{"host": st.Host, "no_program": st.NoProgram} {
				mw.sample("xdp_hostd_dispatch_packets_total", "Packets the dispatcher did not hand to a VM program.", "counter", map[string]string{"uplink": up, "to": what}, c.Packets)
			}
		}
		for _, vm := range dp.VMs() {
			l := func(k, v string) map[string]string {
				return map[string]string{"uplink": up, "vm": vm.Name(), k: v}
			}
			if v, err := vm.Verdicts(); err == nil {
				for name, c := range map[string]hostnet.Count{"aborted": v.Aborted, "drop": v.Drop, "pass": v.Pass, "tx": v.TX,
					"redirect": v.Redirect, "invalid": v.Invalid, "undelivered": v.Undelivered} {
					mw.sample("xdp_hostd_vm_verdict_packets_total", "Packets per verdict of the VM's program.", "counter", l("verdict", name), c.Packets)
					mw.sample("xdp_hostd_vm_verdict_bytes_total", "Bytes per verdict of the VM's program.", "counter", l("verdict", name), c.Bytes)
				}
			}
			if vm.Tap() != nil {
				if tx, err := vm.TXStats(); err == nil {
					for name, c := range map[string]hostnet.Count{"sent": tx.Sent, "spoofed": tx.Spoofed, "invalid": tx.Invalid, "no_uplink": tx.NoUplink} {
						mw.sample("xdp_hostd_vm_tap_tx_packets_total", "Frames the VM wrote into its tap, by outcome.", "counter", l("outcome", name), c.Packets)
					}
				}
			}
		}
	}
	pc := &d.Programs.counters
	pc.mu.Lock()
	mw.sample("xdp_hostd_programs_loaded_total", "Guest programs accepted and installed.", "counter", nil, pc.loaded)
	reasons := make([]string, 0, len(pc.rejected))
	for r := range pc.rejected {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	for _, r := range reasons {
		mw.sample("xdp_hostd_programs_rejected_total", "Guest programs refused, by rule (or the kernel verifier).", "counter", map[string]string{"reason": r}, pc.rejected[r])
	}
	pc.mu.Unlock()
}
