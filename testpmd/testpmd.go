// Package testpmd runs DPDK's testpmd (package dpdk-dev) as a real
// vhost-user peer for tests and benchmarks: with a virtio-user port it is a
// virtio front-end (what a guest's driver would be) connecting to a
// vhost-user socket; with a vhost port it is a back-end serving one. It is
// sized for small machines (no hugepages, 600 MB) and always ended by its
// own pid with SIGKILL: it can outlive a timeout wrapper.
package testpmd

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// ErrMissing says testpmd is not installed.
var ErrMissing = errors.New("dpdk-testpmd not found (apt-get install dpdk-dev)")

// Options describe one testpmd run. Vdevs are the --vdev arguments, e.g.
// "net_virtio_user0,path=/run/x.sock,queues=1,mac=02:..".
type Options struct {
	Vdevs []string
	// Mode is the forwarding mode: rxonly, txonly, io, macswap, ...
	Mode string
	// Lcores is the --lcores value (default "0@0,1@1": main and forwarding
	// lcore, each on its own CPU).
	Lcores string
	// Prefix makes the run's DPDK files unique (default from the pid).
	Prefix string
	// EthPeer is the destination MAC of txonly frames on port 0.
	EthPeer string
	// TxPkts is the txonly frame size (default 64).
	TxPkts int
	// Extra arguments after "--".
	Extra []string
	// Netns, if set, is the path of the network namespace testpmd runs in
	// (through nsenter, which execs it: the pid stays testpmd's).
	Netns string
}

// Proc is a running testpmd.
type Proc struct {
	cmd  *exec.Cmd
	out  *buffer
	Args []string
}

// TB is the part of testing.TB that Require uses (package testpmd does not
// import testing: the daemon's bench command links it).
type TB interface {
	Helper()
	Skip(args ...any)
	Fatal(args ...any)
}

// Require skips tb when testpmd cannot run here (not installed, or not
// root), with the fix in the message; with XDP_HOSTD_REQUIRE_ROOT_TESTS=1
// (set in CI) it fails tb instead. Call it before Start.
func Require(tb TB) {
	tb.Helper()
	msg := ""
	if _, err := exec.LookPath("dpdk-testpmd"); err != nil {
		msg = "this test needs DPDK's testpmd as a vhost-user front-end: " + ErrMissing.Error()
	} else if os.Geteuid() != 0 {
		msg = "testpmd needs root (DPDK's memory and the test's namespaces): run the tests as root (sudo go test ./...)"
	}
	if msg == "" {
		return
	}
	if os.Getenv("XDP_HOSTD_REQUIRE_ROOT_TESTS") == "1" {
		tb.Fatal(msg + " (XDP_HOSTD_REQUIRE_ROOT_TESTS=1 makes this a failure)")
	}
	tb.Skip(msg)
}

// Start runs testpmd; Stop (or the caller's cleanup) must end it.
func Start(o Options) (*Proc, error) {
	bin, err := exec.LookPath("dpdk-testpmd")
	if err != nil {
		return nil, ErrMissing
	}
	if o.Lcores == "" {
		o.Lcores = "0@0,1@1"
	}
	if o.Prefix == "" {
		o.Prefix = fmt.Sprintf("xh%d", time.Now().UnixNano()%1e9)
	}
	if o.TxPkts == 0 {
		o.TxPkts = 64
	}
	args := []string{"--no-huge", "-m", "600", "--no-pci", "--file-prefix", o.Prefix, "--lcores", o.Lcores}
	for _, v := range o.Vdevs {
		args = append(args, "--vdev", v)
	}
	args = append(args, "--", "--total-num-mbufs=8192", "--forward-mode="+o.Mode, "--stats-period", "1",
		"--no-lsc-interrupt", fmt.Sprintf("--txpkts=%d", o.TxPkts))
	if o.EthPeer != "" {
		args = append(args, "--eth-peer=0,"+o.EthPeer)
	}
	args = append(args, o.Extra...)
	argv := append([]string{bin}, args...)
	if o.Netns != "" {
		nsenter, err := exec.LookPath("nsenter")
		if err != nil {
			return nil, fmt.Errorf("run testpmd in %s: %w", o.Netns, err)
		}
		argv = append([]string{nsenter, "--net=" + o.Netns}, argv...)
	}
	p := &Proc{cmd: exec.Command(argv[0], argv[1:]...), out: &buffer{}, Args: argv}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start testpmd: %w", err)
	}
	return p, nil
}

// Pid is testpmd's process ID (to pin it or measure its CPU time).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

var (
	rxRE = regexp.MustCompile(`RX-packets:\s+(\d+)`)
	txRE = regexp.MustCompile(`TX-packets:\s+(\d+)`)
)

// Stats are port 0's packet counters from testpmd's last periodic report
// (printed every second).
func (p *Proc) Stats() (rx, tx uint64) {
	b := p.out.Bytes()
	if m := rxRE.FindAllSubmatch(b, -1); len(m) > 0 {
		rx, _ = strconv.ParseUint(string(m[len(m)-1][1]), 10, 64)
	}
	if m := txRE.FindAllSubmatch(b, -1); len(m) > 0 {
		tx, _ = strconv.ParseUint(string(m[len(m)-1][1]), 10, 64)
	}
	return rx, tx
}

// Output is what testpmd printed so far.
func (p *Proc) Output() string { return string(p.out.Bytes()) }

// Stop kills testpmd (SIGKILL, by pid) and waits (at most 10 s).
func (p *Proc) Stop() error {
	p.cmd.Process.Signal(syscall.SIGKILL)
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("testpmd (pid %d) did not exit after SIGKILL", p.Pid())
	}
}

type buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *buffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.b.Bytes())
}
