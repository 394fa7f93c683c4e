package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
)

// pinnedDataplane is what a stopped daemon left running: the program the
// uplink's pinned link runs and the pins.
func (b *restartBed) pinnedDataplane() (progID uint32, pins []string) {
	b.t.Helper()
	dir := filepath.Join(b.pins, b.topo.Uplink)
	l, err := link.LoadPinnedLink(filepath.Join(dir, "link"), nil)
	if err != nil {
		b.t.Fatal(err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		b.t.Fatal(err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		b.t.Fatal(err)
	}
	for _, e := range ents {
		pins = append(pins, e.Name())
	}
	return uint32(info.Program), pins
}

// runFailing runs the daemon on the bed's configuration with extra flags and
// expects it to exit non-zero within 30 s; it returns its stderr.
func (b *restartBed) runFailing(extra ...string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, append([]string{"run", "--config", b.cfg, "--socket", b.socket}, extra...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); !ok || ctx.Err() != nil {
		b.t.Fatalf("run %v: %v, want a non-zero exit\n%s", extra, err, stderr.String())
	}
	return stderr.String()
}

// A daemon stopped with its dataplane left on the pins, started again with
// a bad --metrics address or with its API socket in use: it exits with an
// error that says so, and the pinned dataplane keeps running untouched (the
// same kernel program, the same pins, traffic delivered).
func TestRunChecksBeforeTouchingTheDataplane(t *testing.T) {
	b := newRestartBed(t)
	b.start()
	b.stop()
	prog, pins := b.pinnedDataplane()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for i, tc := range []struct {
		name  string
		setup func() func()
		args  []string
		want  string
	}{
		{name: "metrics not on loopback", args: []string{"--metrics", "10.0.0.1:1"}, want: `metrics address "10.0.0.1:1": use a loopback address`},
		{name: "metrics port taken", args: []string{"--metrics", taken.Addr().String()}, want: "address already in use"},
		{name: "API socket in use", want: "another xdp-hostd serves " + b.socket, setup: func() func() {
			ln, err := net.Listen("unix", b.socket)
			if err != nil {
				t.Fatal(err)
			}
			return func() { ln.Close() }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				defer tc.setup()()
			}
			stderr := b.runFailing(tc.args...)
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr does not say %q:\n%s", tc.want, stderr)
			}
			if strings.Contains(stderr, "dataplane attached") || strings.Contains(stderr, "swapped in") {
				t.Errorf("the dataplane was touched before the check failed:\n%s", stderr)
			}
			p, ps := b.pinnedDataplane()
			if p != prog || !slices.Equal(ps, pins) {
				t.Errorf("the pinned dataplane changed: program %d, pins %v; before: program %d, pins %v", p, ps, prog, pins)
			}
			b.deliver("after a refused start: "+tc.name, uint16(10+i), 100)
		})
	}
	// A good start still adopts it.
	b.start()
	b.deliver("restarted", 20, 100)
	b.stop()
}
