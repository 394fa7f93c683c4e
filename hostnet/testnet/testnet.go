// Package testnet gives tests their own network topologies: uniquely named
// namespaces (NewNetNS) joined by multi-queue veth pairs (NewVethPair), or
// the ready-made host/wire Topology, all removed when the test ends, also
// when it fails. Helpers never move the test's own thread into another
// namespace: they use netlink handles bound to a namespace, or NetNS.Do,
// which runs a function on a throwaway locked thread.
//
// Tests that need root skip with the fix in the message, unless
// XDP_HOSTD_REQUIRE_ROOT_TESTS=1 (set in CI), which makes them fail instead.
package testnet

import (
	"crypto/rand"
	"encoding/hex"
	"testing"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/internal/testenv"
	"github.com/xdp-hostd/xdp-hostd/traffic"
)

// RequireRoot skips (or, in CI, fails) a test that needs root.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	testenv.RequireRoot(tb, "it creates network namespaces and loads BPF")
}

// SkipOrFail skips a test for what the machine lacks (reason says what and
// how to get it), or fails it when XDP_HOSTD_REQUIRE_ROOT_TESTS=1.
func SkipOrFail(tb testing.TB, reason string) {
	tb.Helper()
	testenv.SkipOrFail(tb, reason)
}

// RequireTool returns the path of program name, or skips (or, in CI,
// fails) the test; install says how to get it.
func RequireTool(tb testing.TB, name, install string) string {
	tb.Helper()
	return testenv.RequireTool(tb, name, install)
}

// UniquePrefix returns a short prefix no other test uses at the same time.
func UniquePrefix() string {
	b := make([]byte, 3)
	rand.Read(b)
	return "t" + hex.EncodeToString(b)
}

// Topology creates a host and a wire namespace joined by a veth with the
// given number of queues, removed when the test ends.
func Topology(tb testing.TB, queues int) *hostnet.Topology {
	tb.Helper()
	RequireRoot(tb)
	topo, err := hostnet.NewTopology(hostnet.TopologyOptions{Prefix: UniquePrefix(), Queues: queues})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := topo.Close(); err != nil {
			tb.Error(err)
		}
	})
	return topo
}

// Runner returns an NSRunner for a namespace path, closed when the test ends.
func Runner(tb testing.TB, path string) *hostnet.NSRunner {
	tb.Helper()
	r, err := hostnet.NewNSRunner(path)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { r.Close() })
	return r
}

// PacketCounter counts the marked frames arriving on ifname in the
// namespace at ns (an AF_PACKET socket read in the background), until the
// test ends.
func PacketCounter(tb testing.TB, ns, ifname string) *traffic.Counter {
	tb.Helper()
	f, err := traffic.OpenPacketSocket(ns, ifname)
	if err != nil {
		tb.Fatal(err)
	}
	c := traffic.NewCounter(f)
	tb.Cleanup(func() { c.Close(); f.Close() })
	return c
}

// TapCounter counts the marked frames a VM's tap delivers, on all its
// queues, until the test ends.
func TapCounter(tb testing.TB, tap *hostnet.Tap) *traffic.Counter {
	tb.Helper()
	var srcs []traffic.Source
	for _, q := range tap.Queues() {
		srcs = append(srcs, q)
	}
	c := traffic.NewCounter(srcs...)
	tb.Cleanup(c.Close)
	return c
}

// Sender returns a sender on the topology's wire side, closed when the test
// ends.
func Sender(tb testing.TB, topo *hostnet.Topology) *traffic.Sender {
	tb.Helper()
	s, err := traffic.NewSender(topo.WireNS, topo.Wire)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}
