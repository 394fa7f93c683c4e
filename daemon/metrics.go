package daemon

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/vmport"
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
	m, err := ListenMetrics(addr)
	if err != nil {
		return nil, err
	}
	m.Serve(d)
	return m, nil
}

// ListenMetrics checks addr (a loopback address) and listens on it without
// serving yet: Run does it before it touches any dataplane.
func ListenMetrics(addr string) (*Metrics, error) {
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
	return &Metrics{ln: ln}, nil
}

// Serve starts answering on the address ListenMetrics took.
func (m *Metrics) Serve(d *Daemon) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		bw := bufio.NewWriter(w)
		d.writeMetrics(bw)
		bw.Flush()
	})
	m.srv = &http.Server{Handler: mux, ReadHeaderTimeout: apiReadHeaderTimeout, ReadTimeout: apiReadTimeout,
		WriteTimeout: apiWriteTimeout, IdleTimeout: apiIdleTimeout, MaxHeaderBytes: apiMaxHeaderBytes}
	go m.srv.Serve(m.ln)
}

// Addr is where the metrics are served.
func (m *Metrics) Addr() string { return m.ln.Addr().String() }

// Close stops serving.
func (m *Metrics) Close() error {
	if m.srv == nil {
		return m.ln.Close()
	}
	return m.srv.Close()
}

// metricWriter collects samples by metric family and writes each family
// as one group (the text format wants a family's samples together, and
// the daemon produces them VM by VM).
type metricWriter struct {
	w        *bufio.Writer
	families map[string]*family
	order    []string
}

type family struct {
	help, typ string
	lines     []string
}

// sampleFloat is sample for a value that is not a whole number.
func (mw *metricWriter) sampleFloat(name, help, typ string, labels map[string]string, v float64) {
	f := mw.family(name, help, typ)
	f.lines = append(f.lines, fmt.Sprintf("%s%s %g", name, mw.labels(labels), v))
}

func (mw *metricWriter) sample(name, help, typ string, labels map[string]string, v uint64) {
	f := mw.family(name, help, typ)
	f.lines = append(f.lines, fmt.Sprintf("%s%s %d", name, mw.labels(labels), v))
}

func (mw *metricWriter) family(name, help, typ string) *family {
	f := mw.families[name]
	if f == nil {
		f = &family{help: help, typ: typ}
		mw.families[name] = f
		mw.order = append(mw.order, name)
	}
	return f
}

// flush writes the families in the order they were first sampled.
func (mw *metricWriter) flush() {
	for _, name := range mw.order {
		f := mw.families[name]
		sort.Strings(f.lines)
		fmt.Fprintf(mw.w, "# HELP %s %s\n# TYPE %s %s\n", name, f.help, name, f.typ)
		for _, l := range f.lines {
			mw.w.WriteString(l)
			mw.w.WriteByte('\n')
		}
	}
}

// labels formats labels sorted by name ("" for none); an empty name is
// left out.
func (mw *metricWriter) labels(labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		if k != "" {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return ""
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%q", k, labels[k])
	}
	b.WriteByte('}')
	return b.String()
}

func (d *Daemon) writeMetrics(w *bufio.Writer) {
	mw := &metricWriter{w: w, families: map[string]*family{}}
	defer mw.flush()
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
					"redirect": v.Redirect, "invalid": v.Invalid, "undelivered": v.Undelivered,
					"spoofed": v.Spoofed, "no_port": v.NoPort} {
					mw.sample("xdp_hostd_vm_verdict_packets_total", "Packets per verdict of the VM's program.", "counter", l("verdict", name), c.Packets)
					mw.sample("xdp_hostd_vm_verdict_bytes_total", "Bytes per verdict of the VM's program.", "counter", l("verdict", name), c.Bytes)
				}
			}
			if c, err := vm.Cost(); err == nil {
				mw.sample("xdp_hostd_vm_program_sampled_packets_total", "Packets whose run time through the VM's program was measured (one in 64).", "counter", l("", ""), c.Sampled)
				mw.sample("xdp_hostd_vm_program_sampled_ns_total", "Run time of the VM's program over the measured packets, in ns: divide by ..._sampled_packets_total for ns per packet.", "counter", l("", ""), c.NS)
			}
			d.mu.Lock()
			port := d.ports[vm.Name()]
			d.mu.Unlock()
			if port != nil {
				writePortMetrics(mw, port, l)
			}
			if vm.Tap() != nil {
				if tx, err := vm.TXStats(); err == nil {
					for name, c := range map[string]hostnet.Count{"redirected": tx.Redirected, "spoofed": tx.Spoofed, "invalid": tx.Invalid, "no_uplink": tx.NoUplink} {
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

// writePortMetrics writes a vhost-user VM's counters: the port's frame
// outcomes, its virtqueues and its AF_XDP sockets.
func writePortMetrics(mw *metricWriter, port *vmport.Port, l func(k, v string) map[string]string) {
	with := func(base map[string]string, kv ...string) map[string]string {
		for i := 0; i+1 < len(kv); i += 2 {
			base[kv[i]] = kv[i+1]
		}
		return base
	}
	connected := uint64(0)
	if port.FrontEndConnected() {
		connected = 1
	}
	mw.sample("xdp_hostd_vhost_front_end_connected", "1 while a front-end (QEMU, DPDK) is connected to the VM's vhost-user socket.", "gauge", l("socket", port.Socket()), connected)
	st := port.Stats()
	for name, v := range map[string]uint64{"rx_delivered": st.RXDelivered, "rx_dropped": st.RXDropped, "rx_flooded": st.RXFlooded,
		"tx_sent": st.TXSent, "tx_spoofed": st.TXSpoofed, "tx_dropped": st.TXDropped} {
		mw.sample("xdp_hostd_vhost_frames_total", "Frames of the VM's vhost-user port, by outcome.", "counter", l("outcome", name), v)
	}
	mw.sampleFloat("xdp_hostd_vhost_rx_cpu_seconds_total", "CPU time of the port's receive threads.", "counter", l("", ""), st.RXCPU.Seconds())
	for _, q := range port.Device().Stats() {
		dir := "rx"
		if q.Queue%2 == 1 {
			dir = "tx"
		}
		lq := func() map[string]string { return with(l("virtqueue", strconv.Itoa(q.Queue)), "dir", dir) }
		mw.sample("xdp_hostd_vhost_queue_packets_total", "Frames moved through the virtqueue.", "counter", lq(), q.Packets)
		mw.sample("xdp_hostd_vhost_queue_bytes_total", "Bytes moved through the virtqueue (without the virtio-net header).", "counter", lq(), q.Bytes)
		mw.sample("xdp_hostd_vhost_queue_drops_total", "Frames the virtqueue did not move (no guest buffers, not ready, malformed, too large).", "counter", lq(), q.Drops)
		mw.sample("xdp_hostd_vhost_queue_calls_total", "Interrupts to the guest (call eventfd writes).", "counter", lq(), q.Calls)
		mw.sample("xdp_hostd_vhost_queue_kicks_total", "Kicks from the guest processed.", "counter", lq(), q.Kicks)
		mw.sample("xdp_hostd_vhost_queue_broken_total", "Times the guest driver broke the virtqueue (bad descriptors) or its memory faulted (the front-end shrank it); each is logged.", "counter", lq(), q.Broken)
	}
	socks, _ := port.SocketStats()
	for _, s := range socks {
		lq := func() map[string]string { return l("rx_queue", strconv.Itoa(s.RXQueue)) }
		mw.sample("xdp_hostd_xsk_rx_frames_total", "Frames received on the VM's AF_XDP socket.", "counter", lq(), s.RXFrames)
		mw.sample("xdp_hostd_xsk_tx_frames_total", "Frames queued for transmission on the VM's AF_XDP socket.", "counter", lq(), s.TXFrames)
		mw.sample("xdp_hostd_xsk_rx_ring_full_total", "Frames the kernel dropped because the socket's RX ring was full (the reader fell behind).", "counter", lq(), s.RXRingFull)
		mw.sample("xdp_hostd_xsk_fill_ring_empty_total", "Times the kernel found the socket's fill ring empty.", "counter", lq(), s.RXFillRingEmpty)
		mw.sample("xdp_hostd_xsk_rx_dropped_total", "Frames the kernel dropped for other reasons (e.g. too large for a UMEM frame).", "counter", lq(), s.RXDropped)
		mw.sample("xdp_hostd_xsk_invalid_descs_total", "Invalid descriptors the kernel found in the socket's rings.", "counter", with(lq(), "dir", "rx"), s.RXInvalidDescs)
		mw.sample("xdp_hostd_xsk_invalid_descs_total", "Invalid descriptors the kernel found in the socket's rings.", "counter", with(lq(), "dir", "tx"), s.TXInvalidDescs)
		mw.sample("xdp_hostd_xsk_kicks_total", "sendto calls made to send (one per batch).", "counter", lq(), s.Kicks)
	}
}
