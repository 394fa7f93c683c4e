package traffic

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/xdp-hostd/xdp-hostd/internal/testenv"
)

// requireRoot skips a test that needs root (namespaces, BPF, taps).
func requireRoot(tb testing.TB) {
	tb.Helper()
	testenv.RequireRoot(tb, "creates network namespaces, veths, taps and loads BPF")
}

// run runs an ip(8) style command, failing the test on error.
func run(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newNS creates a uniquely named network namespace, deleted when the test
// ends (also on failure), and returns its path.
func newNS(tb testing.TB, tag string) (name, path string) {
	tb.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	name = "xtr" + tag + hex.EncodeToString(b)
	run(tb, "ip", "netns", "add", name)
	tb.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			tb.Errorf("delete namespace %s: %v: %s", name, err, out)
		}
	})
	return name, "/run/netns/" + name
}

// vethPair is the test "NIC": Uplink in HostNS, its peer Wire (the traffic
// source) in WireNS, both with Queues RX and TX queues, both up.
type vethPair struct {
	HostNS, WireNS     string // paths
	Uplink, Wire       string
	UplinkMAC, WireMAC net.HardwareAddr
	Queues             int
}

func newVethPair(tb testing.TB, queues int) *vethPair {
	tb.Helper()
	requireRoot(tb)
	hn, hp := newNS(tb, "h")
	wn, wp := newNS(tb, "w")
	p := &vethPair{HostNS: hp, WireNS: wp, Uplink: "up0", Wire: "wire0", Queues: queues,
		UplinkMAC: net.HardwareAddr{0x02, 0x55, 0, 0, 0, 0x01}, WireMAC: net.HardwareAddr{0x02, 0x55, 0, 0, 0, 0x02}}
	q := []string{"numtxqueues", strconv.Itoa(queues), "numrxqueues", strconv.Itoa(queues)}
	args := append([]string{"-n", wn, "link", "add", p.Wire, "address", p.WireMAC.String()}, q...)
	args = append(args, "type", "veth", "peer", "name", p.Uplink, "netns", hn, "address", p.UplinkMAC.String())
	args = append(args, q...)
	run(tb, "ip", args...)
	run(tb, "ip", "-n", wn, "link", "set", p.Wire, "up")
	run(tb, "ip", "-n", hn, "link", "set", p.Uplink, "up")
	return p
}
