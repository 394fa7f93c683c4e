package vmtests

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestpmdConfig configures a DPDK testpmd acting as a vhost-user backend
// (net_vhost PMD), the reference to compare our backend against.
type TestpmdConfig struct {
	// Socket is the vhost-user socket path (required).
	Socket string
	// Queues is the number of queue pairs (default 1).
	Queues int
	// ForwardMode is testpmd's --forward-mode (default "5tswap": every
	// frame goes back with MACs, IPs and UDP/TCP ports swapped, so a
	// guest's UDP datagrams come back to the socket that sent them).
	// "macswap", "io", "rxonly" and "txonly" work too.
	ForwardMode string
	// Client makes testpmd connect to Socket (QEMU then needs
	// VhostUserNIC.Server); default: testpmd listens.
	Client bool
	// CPU is the host CPU both testpmd lcores run on (default: the last
	// one). Its forwarding lcore busy-polls that CPU.
	CPU int
	// Args are extra testpmd application arguments (after "--").
	Args []string
}

// Testpmd is a running dpdk-testpmd, killed (SIGKILL to its pid) when the
// test ends; its socket and DPDK runtime directory are removed then.
type Testpmd struct {
	Socket  string
	Cmdline []string

	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string // stdout lines, for Stats
	out    *lineLogger
	exited chan struct{}
	mu     sync.Mutex // serializes Stats
}

// StartTestpmd starts testpmd for tb and, in server mode, waits (up to
// 20 s) for its vhost-user socket. It skips tb without testpmd.
func StartTestpmd(tb testing.TB, cfg TestpmdConfig) *Testpmd {
	tb.Helper()
	SkipWithoutTestpmd(tb)
	if cfg.Socket == "" {
		tb.Fatal("vmtests: TestpmdConfig.Socket is required")
	}
	if cfg.Queues <= 0 {
		cfg.Queues = 1
	}
	if cfg.ForwardMode == "" {
		cfg.ForwardMode = "5tswap"
	}
	if cfg.CPU == 0 {
		cfg.CPU = runtime.NumCPU() - 1
	}
	b := make([]byte, 4)
	rand.Read(b)
	prefix := "vmt" + hex.EncodeToString(b)
	vdev := fmt.Sprintf("net_vhost0,iface=%s,queues=%d", cfg.Socket, cfg.Queues)
	if cfg.Client {
		vdev += ",client=1"
	}
	args := []string{"dpdk-testpmd",
		"--no-huge", "-m", "600", "--no-pci", "--no-telemetry",
		"--log-level=lib.vhost.config:notice",
		"--lcores", fmt.Sprintf("0@%d,1@%d", cfg.CPU, cfg.CPU),
		"--file-prefix", prefix,
		"--vdev", vdev,
		"--",
		"--total-num-mbufs=8192", "-i", "--auto-start", "--disable-link-check",
		"--forward-mode=" + cfg.ForwardMode,
		fmt.Sprintf("--rxq=%d", cfg.Queues), fmt.Sprintf("--txq=%d", cfg.Queues),
	}
	args = append(args, cfg.Args...)
	// testpmd's stdout is block-buffered into a pipe: line-buffer it so
	// Stats sees its answers (stdbuf execs testpmd: the pid is testpmd's).
	run := args
	if p, err := exec.LookPath("stdbuf"); err == nil {
		run = append([]string{p, "-oL"}, args...)
	}
	p := &Testpmd{Socket: cfg.Socket, Cmdline: run, lines: make(chan string, 1024), exited: make(chan struct{})}
	tb.Logf("testpmd command line: %s", shellQuote(run))

	pr, pw, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	p.cmd = exec.Command(run[0], run[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		tb.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		tb.Fatalf("start testpmd: %v", err)
	}
	pw.Close()
	// Lines go to the test log and to Stats.
	tee, teeW := io.Pipe()
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(teeW, line)
			select {
			case p.lines <- line:
			default: // nobody is asking for stats: drop
			}
		}
		teeW.Close()
		pr.Close()
		close(p.lines)
	}()
	p.out = newLineLogger(tb, "testpmd", tee)
	go func() {
		p.cmd.Wait()
		close(p.exited)
	}()
	tb.Cleanup(func() {
		p.cmd.Process.Kill()
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			tb.Errorf("testpmd (pid %d) did not exit 10 s after SIGKILL", p.cmd.Process.Pid)
		}
		p.stdin.Close()
		p.out.stop(2 * time.Second)
		if !cfg.Client {
			os.Remove(cfg.Socket)
		}
		os.RemoveAll(filepath.Join("/var/run/dpdk", prefix))
	})

	if !cfg.Client {
		deadline := time.Now().Add(20 * time.Second)
		for {
			if fi, err := os.Stat(cfg.Socket); err == nil && fi.Mode()&os.ModeSocket != 0 {
				break
			}
			select {
			case <-p.exited:
				tb.Fatalf("testpmd exited before creating %s (output above)", cfg.Socket)
			case <-time.After(50 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				tb.Fatalf("testpmd did not create %s within 20 s", cfg.Socket)
			}
		}
	}
	return p
}

// TestpmdStats are one port's counters from "show port stats".
type TestpmdStats struct {
	RXPackets, RXBytes, RXMissed, RXErrors uint64
	TXPackets, TXBytes, TXErrors           uint64
}

var statRe = regexp.MustCompile(`([RT]X-(?:packets|bytes|missed|errors)):\s*(\d+)`)

// Stats returns port 0's counters, asking testpmd on its command line and
// waiting up to 10 s for the answer.
func (p *Testpmd) Stats() (TestpmdStats, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	// Drop what is queued: the answer must come after the command.
	for drained := false; !drained; {
		select {
		case <-p.lines:
		default:
			drained = true
		}
	}
	if _, err := io.WriteString(p.stdin, "show port stats 0\n"); err != nil {
		return TestpmdStats{}, fmt.Errorf("testpmd: send command: %w", err)
	}
	var s TestpmdStats
	timeout := time.After(10 * time.Second)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				return s, fmt.Errorf("testpmd exited")
			}
			for _, m := range statRe.FindAllStringSubmatch(line, -1) {
				v, _ := strconv.ParseUint(m[2], 10, 64)
				switch m[1] {
				case "RX-packets":
					s.RXPackets = v
				case "RX-bytes":
					s.RXBytes = v
				case "RX-missed":
					s.RXMissed = v
				case "RX-errors":
					s.RXErrors = v
				case "TX-packets":
					s.TXPackets = v
				case "TX-bytes":
					s.TXBytes = v
				case "TX-errors":
					s.TXErrors = v
				}
			}
			if strings.Contains(line, "TX-packets") {
				return s, nil
			}
		case <-timeout:
			return s, fmt.Errorf("testpmd: no port stats within 10 s")
		case <-p.exited:
			return s, fmt.Errorf("testpmd exited")
		}
	}
}
