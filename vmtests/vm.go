package vmtests

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/agentproto"
	"github.com/xdp-hostd/xdp-hostd/vmtests/image"
	"github.com/xdp-hostd/xdp-hostd/vmtests/vmproto"
)

// VhostUserNIC is a virtio-net-pci device backed by a vhost-user socket.
type VhostUserNIC struct {
	// Socket is the vhost-user unix socket.
	Socket string
	// MAC of the guest NIC. Empty: 52:54:00:12:34:56 plus the NIC's index.
	MAC string
	// Queues is the number of queue pairs (default 1); more turns on mq.
	Queues int
	// Server makes QEMU listen on Socket and the backend connect (the
	// backend's "client" mode). Default: QEMU connects to the backend's
	// socket, retrying every second (reconnect=1), also after the backend
	// restarts. Either way QEMU does not start the guest before the
	// backend is connected.
	Server bool
	// NoGuestAnnounce hides VIRTIO_NET_F_GUEST_ANNOUNCE from the guest
	// (guest_announce=off): after a live migration QEMU then asks the
	// vhost-user back-end to announce the guest (SEND_RARP) instead of
	// having the guest send gratuitous ARPs.
	NoGuestAnnounce bool
	// Vectors is the device's MSI-X vectors; 0 leaves vectors=0 (INTx,
	// which works with mq too). With mq, 2*Queues+2 gives each virtqueue
	// its own vector. Debian's QEMU 7.2 under TCG segfaults at boot with
	// any MSI-X vectors on a vhost-user NIC, whatever the backend
	// (testpmd as well as xdp-hostd), 1 or 2 queue pairs.
	Vectors int
}

// TapNIC is a virtio-net-pci device backed by an existing tap that QEMU
// opens by name (-netdev tap,ifname=...), in QEMU's network namespace
// (WithNetNS). The tap must have QEMU's flags (vnet_hdr; multi_queue
// with more than one queue), as hostnet.CreatePersistentTap (tap_mode "qemu") makes it.
type TapNIC struct {
	Ifname string
	// MAC of the guest NIC. Empty: 52:54:00:12:34:56 plus the NIC's index.
	MAC string
	// Queues is the number of queue pairs (default 1); more turns on mq
	// with a vector per virtqueue.
	Queues int
}

// Option configures StartT.
type Option func(*config)

type config struct {
	name        string
	memMB       int
	memExtraKiB int // added to memMB (WithMigratableTCGMemory)
	cpus        int
	shared      bool
	nics        []VhostUserNIC
	taps        []TapNIC
	netns       string
	bootTimeout time.Duration
	cmdTimeout  time.Duration
	lifetime    time.Duration
	kernelArgs  []string
	qemuArgs    []string
	image       *image.Image
	accel       string
	hostdAgent  string
	qmp         string
	incoming    string
}

// WithXDPHostdAgent gives the VM xdp-hostd's guest agent channel: a
// virtio-serial port named org.xdp-hostd.agent.0 that QEMU connects to the
// daemon's socket at path (reconnecting when the daemon closes it). The
// image has the agent at /bin/xdp-hostd-agent.
func WithXDPHostdAgent(path string) Option { return func(c *config) { c.hostdAgent = path } }

// WithQMP gives the VM a QMP monitor: QEMU listens on the unix socket at
// path (see package qmp).
func WithQMP(path string) Option { return func(c *config) { c.qmp = path } }

// WithIncoming starts QEMU waiting for a live migration at uri (QEMU's
// -incoming, e.g. "unix:/path" or "tcp:127.0.0.1:4444"). StartT then
// returns once QEMU has connected the guest channel, without waiting for a
// ready event: the guest arrives already running, and its commands (Do)
// are answered once the migration completed. The other options must
// describe the same machine as the source's (memory, NICs and MACs; the
// NICs' sockets may differ).
func WithIncoming(uri string) Option { return func(c *config) { c.incoming = uri } }

// WithName sets the VM's name, the prefix of its console lines (default:
// the test's name).
func WithName(name string) Option { return func(c *config) { c.name = name } }

// WithMemory sets the guest's memory in MiB (default 256).
func WithMemory(mb int) Option { return func(c *config) { c.memMB = mb } }

// WithMigratableTCGMemory gives the guest 8 KiB more than its memory in
// MiB, for a VM that is live-migrated. QEMU before 9.0 loses guest stores
// under TCG while it migrates (upstream 03bfc2188f, "physmem: Fix
// migration dirty bitmap coherency with TCG memory access"): its dirty
// bitmap sync takes 64 pages at a time without resetting the TCG TLB's
// dirty state, so a vCPU keeps storing through TLB entries that no longer
// mark pages dirty, and the destination gets stale pages (here: per-CPU
// hrtimer pages, and the destination guest crashed). A RAM block whose
// length is not a multiple of 64 pages takes the per-page sync, which
// resets the TLB. With KVM it changes nothing but the size.
func WithMigratableTCGMemory() Option { return func(c *config) { c.memExtraKiB = 8 } }

// memSize is the memory backend's size.
func memSize(c config) string {
	if c.memExtraKiB == 0 {
		return strconv.Itoa(c.memMB) + "M"
	}
	return c.memArg()
}

// memArg is the guest memory for -m and the memory backend's size.
func (c config) memArg() string {
	if c.memExtraKiB == 0 {
		return strconv.Itoa(c.memMB)
	}
	return strconv.Itoa(c.memMB*1024+c.memExtraKiB) + "K"
}

// WithCPUs sets the number of vCPUs (default 1).
func WithCPUs(n int) Option { return func(c *config) { c.cpus = n } }

// WithSharedMemory backs guest memory with a shared memfd (default on),
// which vhost-user backends need to map it.
func WithSharedMemory(on bool) Option { return func(c *config) { c.shared = on } }

// WithVhostUserNIC adds a vhost-user virtio-net-pci NIC; use it once per NIC.
func WithVhostUserNIC(nic VhostUserNIC) Option {
	return func(c *config) { c.nics = append(c.nics, nic) }
}

// WithTapNIC adds a tap-backed virtio-net-pci NIC after the vhost-user
// ones; use it once per NIC.
func WithTapNIC(nic TapNIC) Option { return func(c *config) { c.taps = append(c.taps, nic) } }

// WithNetNS runs QEMU in the network namespace at path (through nsenter,
// which execs QEMU: the VM's process is still QEMU's), for taps that live
// there.
func WithNetNS(path string) Option { return func(c *config) { c.netns = path } }

// WithBootTimeout bounds the time from starting QEMU to the guest's ready
// event (default 60 s).
func WithBootTimeout(d time.Duration) Option { return func(c *config) { c.bootTimeout = d } }

// WithCommandTimeout is the least time Do waits for a result (default 30 s);
// commands that take longer by design (their Budget) get longer.
func WithCommandTimeout(d time.Duration) Option { return func(c *config) { c.cmdTimeout = d } }

// WithTimeout bounds the VM's whole life (default XDP_HOSTD_VMTEST_TIMEOUT,
// else 3 m): QEMU is killed when it passes.
func WithTimeout(d time.Duration) Option { return func(c *config) { c.lifetime = d } }

// WithKernelArgs appends to the kernel command line.
func WithKernelArgs(args ...string) Option {
	return func(c *config) { c.kernelArgs = append(c.kernelArgs, args...) }
}

// WithQEMUArgs appends raw QEMU arguments.
func WithQEMUArgs(args ...string) Option {
	return func(c *config) { c.qemuArgs = append(c.qemuArgs, args...) }
}

// WithImage boots img instead of the default image (Image(t)).
func WithImage(img *image.Image) Option { return func(c *config) { c.image = img } }

// VM is a running guest. Its methods may be called from several goroutines.
type VM struct {
	Name    string
	Cmdline []string       // the QEMU command line, as run
	NICs    []VhostUserNIC // as configured, defaults filled in
	Taps    []TapNIC       // as configured, defaults filled in
	Ready   vmproto.Ready  // what the guest reported when it came up
	Boot    time.Duration  // from starting QEMU to the ready event

	cmd        *exec.Cmd
	conn       net.Conn
	cmdTimeout time.Duration
	console    *lineLogger

	wmu    sync.Mutex // serializes writes to conn
	nextID atomic.Uint64

	pmu     sync.Mutex
	pending map[uint64]chan vmproto.Event
	broken  error // set when the channel is gone; guarded by pmu

	readyCh chan vmproto.Event
	exited  chan struct{}
	exitErr error // valid after exited is closed

	killOnce   sync.Once
	killReason atomic.Value // string
}

// StartT boots a VM for tb and returns when the guest program is ready. It
// skips tb when QEMU or the image is unavailable and fails it when the VM
// does not come up in time. The VM is killed when tb ends.
func StartT(tb testing.TB, opts ...Option) *VM {
	tb.Helper()
	SkipWithoutQEMU(tb)
	cfg := config{memMB: 256, cpus: 1, shared: true, bootTimeout: 60 * time.Second, cmdTimeout: 30 * time.Second, lifetime: 3 * time.Minute, accel: "tcg"}
	if s := os.Getenv("XDP_HOSTD_VMTEST_TIMEOUT"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			tb.Fatalf("XDP_HOSTD_VMTEST_TIMEOUT=%q: want a positive Go duration like 3m", s)
		}
		cfg.lifetime = d
	}
	if a := os.Getenv("XDP_HOSTD_VMTEST_ACCEL"); a != "" {
		cfg.accel = a
	}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.name == "" {
		cfg.name = tb.Name()
	}
	if len(cfg.nics) > 0 && !cfg.shared {
		tb.Fatal("vmtests: vhost-user NICs need shared guest memory; drop WithSharedMemory(false)")
	}
	img := cfg.image
	if img == nil {
		img = Image(tb)
	}

	dir, err := os.MkdirTemp("", "vmt-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	agentSock := filepath.Join(dir, "agent.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: agentSock, Net: "unix"})
	if err != nil {
		tb.Fatalf("vmtests: listen on %s: %v", agentSock, err)
	}
	tb.Cleanup(func() { ln.Close() })

	vm := &VM{
		Name:       cfg.name,
		cmdTimeout: cfg.cmdTimeout,
		pending:    map[uint64]chan vmproto.Event{},
		readyCh:    make(chan vmproto.Event, 1),
		exited:     make(chan struct{}),
	}
	args, err := vm.qemuArgs(cfg, img, agentSock)
	if err != nil {
		tb.Fatal(err)
	}
	vm.Cmdline = args
	tb.Logf("%s: QEMU command line: %s", vm.Name, shellQuote(args))

	pr, pw, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	vm.cmd = exec.Command(args[0], args[1:]...)
	vm.cmd.Stdout, vm.cmd.Stderr = pw, pw
	vm.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := vm.cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		tb.Fatalf("vmtests: start QEMU: %v", err)
	}
	pw.Close()
	vm.console = newLineLogger(tb, vm.Name, pr)
	go func() {
		vm.exitErr = vm.cmd.Wait()
		close(vm.exited)
	}()
	life := time.AfterFunc(cfg.lifetime, func() {
		vm.kill(fmt.Sprintf("VM lifetime of %v exceeded (WithTimeout, XDP_HOSTD_VMTEST_TIMEOUT)", cfg.lifetime))
	})
	tb.Cleanup(func() {
		life.Stop()
		vm.kill("test ended")
		select {
		case <-vm.exited:
		case <-time.After(10 * time.Second):
			tb.Errorf("%s: QEMU (pid %d) did not exit 10 s after SIGKILL", vm.Name, vm.cmd.Process.Pid)
		}
		vm.console.stop(2 * time.Second)
		if r, _ := vm.killReason.Load().(string); r != "" && r != "test ended" && !tb.Failed() {
			tb.Errorf("%s: QEMU was killed: %s", vm.Name, r)
		}
	})

	// QEMU connects to the agent socket while it starts.
	deadline := start.Add(cfg.bootTimeout)
	ln.SetDeadline(deadline)
	type acceptResult struct {
		c   net.Conn
		err error
	}
	accepted := make(chan acceptResult, 1)
	go func() {
		c, err := ln.Accept()
		accepted <- acceptResult{c, err}
	}()
	select {
	case a := <-accepted:
		if a.err != nil {
			vm.kill("boot failed")
			tb.Fatalf("%s: QEMU did not connect the virtio-serial channel within %v: %v", vm.Name, cfg.bootTimeout, a.err)
		}
		vm.conn = a.c
		tb.Cleanup(func() { a.c.Close() })
	case <-vm.exited:
		tb.Fatalf("%s: QEMU exited before connecting the virtio-serial channel: %v (its output is above)", vm.Name, vm.exitErr)
	}
	go vm.readEvents()
	if cfg.incoming != "" {
		tb.Logf("%s: QEMU waits for a migration at %s", vm.Name, cfg.incoming)
		return vm
	}

	select {
	case ev := <-vm.readyCh:
		vm.Boot = time.Since(start)
		if err := json.Unmarshal(ev.Data, &vm.Ready); err != nil {
			tb.Fatalf("%s: bad ready event %s: %v", vm.Name, ev.Data, err)
		}
		tb.Logf("%s: guest ready after %v (guest uptime %.2fs, kernel %s)", vm.Name, vm.Boot.Round(time.Millisecond), vm.Ready.UptimeSec, vm.Ready.Kernel)
	case <-vm.exited:
		tb.Fatalf("%s: QEMU exited before the guest was ready: %v (console above)", vm.Name, vm.exitErr)
	case <-time.After(time.Until(deadline)):
		vm.kill("boot timeout")
		tb.Fatalf("%s: no ready event from the guest within %v (WithBootTimeout; console above)", vm.Name, cfg.bootTimeout)
	}
	return vm
}

func (vm *VM) qemuArgs(cfg config, img *image.Image, agentSock string) ([]string, error) {
	q := qemuCommand()
	var args []string
	if cfg.netns != "" {
		args = append(args, "nsenter", "--net="+cfg.netns, "--")
	}
	args = append(args, q...)
	args = append(args,
		"-name", cfg.name,
		"-machine", "pc",
		"-accel", cfg.accel,
		"-smp", strconv.Itoa(cfg.cpus),
		"-m", cfg.memArg(),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "stdio",
	)
	if cfg.accel == "kvm" {
		args = append(args, "-cpu", "host")
	} else {
		args = append(args, "-cpu", "max")
	}
	if cfg.shared {
		args = append(args,
			"-object", fmt.Sprintf("memory-backend-memfd,id=mem,size=%s,share=on", memSize(cfg)),
			"-numa", "node,memdev=mem")
	}
	args = append(args,
		"-kernel", img.Kernel,
		"-initrd", img.Initramfs,
		"-append", strings.Join(append([]string{"console=ttyS0", "panic=-1", "quiet"}, cfg.kernelArgs...), " "),
		"-device", "virtio-serial-pci,id=vser0",
		"-chardev", "socket,id=agent,path="+agentSock,
		"-device", "virtserialport,bus=vser0.0,chardev=agent,name="+vmproto.PortName,
	)
	for i, nic := range cfg.nics {
		if nic.Socket == "" {
			return nil, fmt.Errorf("vmtests: NIC %d has no vhost-user socket", i)
		}
		if nic.Queues <= 0 {
			nic.Queues = 1
		}
		if nic.MAC == "" {
			nic.MAC = fmt.Sprintf("52:54:00:12:34:%02x", 0x56+i)
		}
		if _, err := net.ParseMAC(nic.MAC); err != nil {
			return nil, fmt.Errorf("vmtests: NIC %d: %w", i, err)
		}
		chardev := fmt.Sprintf("socket,id=vu%d,path=%s", i, nic.Socket)
		if nic.Server {
			chardev += ",server=on,wait=off"
		} else {
			chardev += ",reconnect=1"
		}
		dev := fmt.Sprintf("virtio-net-pci,netdev=n%d,mac=%s,vectors=%d", i, nic.MAC, max(nic.Vectors, 0))
		if nic.Queues > 1 {
			dev += ",mq=on"
		}
		if nic.NoGuestAnnounce {
			dev += ",guest_announce=off"
		}
		args = append(args,
			"-chardev", chardev,
			"-netdev", fmt.Sprintf("vhost-user,id=n%d,chardev=vu%d,queues=%d", i, i, nic.Queues),
			"-device", dev)
		vm.NICs = append(vm.NICs, nic)
	}
	for j, tap := range cfg.taps {
		i := len(cfg.nics) + j
		if tap.Ifname == "" {
			return nil, fmt.Errorf("vmtests: tap NIC %d has no interface name", j)
		}
		if tap.Queues <= 0 {
			tap.Queues = 1
		}
		if tap.MAC == "" {
			tap.MAC = fmt.Sprintf("52:54:00:12:34:%02x", 0x56+i)
		}
		if _, err := net.ParseMAC(tap.MAC); err != nil {
			return nil, fmt.Errorf("vmtests: tap NIC %d: %w", j, err)
		}
		netdev := fmt.Sprintf("tap,id=n%d,ifname=%s,script=no,downscript=no,vhost=off", i, tap.Ifname)
		dev := fmt.Sprintf("virtio-net-pci,netdev=n%d,mac=%s", i, tap.MAC)
		if tap.Queues > 1 {
			netdev += fmt.Sprintf(",queues=%d", tap.Queues)
			dev += fmt.Sprintf(",mq=on,vectors=%d", 2*tap.Queues+2)
		}
		args = append(args, "-netdev", netdev, "-device", dev)
		vm.Taps = append(vm.Taps, tap)
	}
	if cfg.qmp != "" {
		args = append(args, "-qmp", "unix:"+cfg.qmp+",server=on,wait=off")
	}
	if cfg.incoming != "" {
		args = append(args, "-incoming", cfg.incoming)
	}
	if cfg.hostdAgent != "" {
		args = append(args,
			"-chardev", "socket,id=xhagent,reconnect=1,path="+cfg.hostdAgent,
			"-device", "virtserialport,bus=vser0.0,chardev=xhagent,name="+agentproto.PortName)
	}
	return append(args, cfg.qemuArgs...), nil
}

// kill sends SIGKILL to QEMU (its own pid) once, recording why.
func (vm *VM) kill(reason string) {
	vm.killOnce.Do(func() {
		select {
		case <-vm.exited:
			return
		default:
		}
		vm.killReason.Store(reason)
		vm.cmd.Process.Kill()
	})
}

// Kill ends the VM now (SIGKILL to QEMU) and waits up to 10 s for QEMU to
// exit. StartT's cleanup does the same; call Kill to test a guest vanishing.
func (vm *VM) Kill() error {
	vm.kill("test ended")
	select {
	case <-vm.exited:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s: QEMU (pid %d) still running 10 s after SIGKILL", vm.Name, vm.cmd.Process.Pid)
	}
}

// Poweroff asks the guest to power off and waits up to timeout for QEMU to
// exit.
func (vm *VM) Poweroff(timeout time.Duration) error {
	if _, err := vm.Do(vmproto.Poweroff{}); err != nil {
		return err
	}
	select {
	case <-vm.exited:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("%s: QEMU still running %v after the guest's poweroff", vm.Name, timeout)
	}
}

// Exited is closed when QEMU has exited.
func (vm *VM) Exited() <-chan struct{} { return vm.exited }

// readEvents dispatches the guest's events until the channel closes.
func (vm *VM) readEvents() {
	r := bufio.NewReaderSize(vm.conn, 1<<16)
	var err error
	for {
		var line []byte
		line, err = r.ReadBytes('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			var ev vmproto.Event
			if jerr := json.Unmarshal(line, &ev); jerr != nil {
				vm.console.logf("%s: unparsable event %q: %v", vm.Name, line, jerr)
			} else {
				vm.dispatch(ev)
			}
		}
		if err != nil {
			break
		}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		err = errors.New("virtio-serial channel closed (QEMU exited?)")
	}
	vm.pmu.Lock()
	vm.broken = err
	for id, ch := range vm.pending {
		close(ch)
		delete(vm.pending, id)
	}
	vm.pmu.Unlock()
}

func (vm *VM) dispatch(ev vmproto.Event) {
	if ev.Type == vmproto.EventReady {
		select {
		case vm.readyCh <- ev:
		default:
			vm.console.logf("%s: extra ready event (guest program restarted?)", vm.Name)
		}
		return
	}
	vm.pmu.Lock()
	ch, ok := vm.pending[ev.ID]
	delete(vm.pending, ev.ID)
	vm.pmu.Unlock()
	if !ok {
		vm.console.logf("%s: guest event for no pending command: %+v", vm.Name, ev)
		return
	}
	ch <- ev
}

// Result is the guest's answer to one command.
type Result struct {
	ID   uint64
	Op   vmproto.Op
	Data json.RawMessage // the op's result type, e.g. vmproto.PingResult
	Took time.Duration   // round trip as seen by the host
}

// Decode unmarshals r.Data into v.
func (r Result) Decode(v any) error {
	if err := json.Unmarshal(r.Data, v); err != nil {
		return fmt.Errorf("decode %s result %s: %w", r.Op, r.Data, err)
	}
	return nil
}

// CommandError is a command the guest answered with an error event.
type CommandError struct {
	Op  vmproto.Op
	ID  uint64
	Msg string
}

func (e *CommandError) Error() string {
	return fmt.Sprintf("guest: %s (command %d): %s", e.Op, e.ID, e.Msg)
}

// Do sends req to the guest program and waits for its result, at most the
// larger of the command timeout and req.Budget(). Guest-side failures are
// *CommandError.
func (vm *VM) Do(req vmproto.Request) (Result, error) {
	id := vm.nextID.Add(1)
	cmd, err := vmproto.NewCommand(id, req)
	if err != nil {
		return Result{}, err
	}
	line, err := json.Marshal(cmd)
	if err != nil {
		return Result{}, err
	}
	ch := make(chan vmproto.Event, 1)
	vm.pmu.Lock()
	if vm.broken != nil {
		vm.pmu.Unlock()
		return Result{}, fmt.Errorf("%s: %s: %w", vm.Name, req.Op(), vm.broken)
	}
	vm.pending[id] = ch
	vm.pmu.Unlock()
	forget := func() {
		vm.pmu.Lock()
		delete(vm.pending, id)
		vm.pmu.Unlock()
	}

	wait := max(vm.cmdTimeout, req.Budget())
	start := time.Now()
	vm.wmu.Lock()
	vm.conn.SetWriteDeadline(start.Add(wait))
	_, err = vm.conn.Write(append(line, '\n'))
	vm.wmu.Unlock()
	if err != nil {
		forget()
		return Result{}, fmt.Errorf("%s: send %s: %w", vm.Name, req.Op(), err)
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case ev, ok := <-ch:
		if !ok {
			vm.pmu.Lock()
			err := vm.broken
			vm.pmu.Unlock()
			return Result{}, fmt.Errorf("%s: %s: no answer: %w", vm.Name, req.Op(), err)
		}
		if ev.Type == vmproto.EventError {
			return Result{}, &CommandError{Op: req.Op(), ID: id, Msg: ev.Error}
		}
		return Result{ID: id, Op: req.Op(), Data: ev.Data, Took: time.Since(start)}, nil
	case <-timer.C:
		forget()
		return Result{}, fmt.Errorf("%s: no answer to %s (command %d) within %v", vm.Name, req.Op(), id, wait)
	case <-vm.exited:
		forget()
		return Result{}, fmt.Errorf("%s: QEMU exited while waiting for %s: %v", vm.Name, req.Op(), vm.exitErr)
	}
}

// Call is Do with the result decoded into T, the op's result type:
//
//	res, err := vmtests.Call[vmproto.PingResult](vm, vmproto.Ping{Addr: "10.0.0.1"})
func Call[T any](vm *VM, req vmproto.Request) (T, error) {
	var v T
	r, err := vm.Do(req)
	if err != nil {
		return v, err
	}
	return v, r.Decode(&v)
}

// lineLogger logs a stream line by line through tb.Logf until stopped;
// it never calls tb after stop returns.
type lineLogger struct {
	tb     testing.TB
	prefix string
	r      io.ReadCloser
	done   chan struct{}

	mu      sync.Mutex
	stopped bool
}

func newLineLogger(tb testing.TB, prefix string, r io.ReadCloser) *lineLogger {
	l := &lineLogger{tb: tb, prefix: prefix, r: r, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		sc := bufio.NewScanner(r)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			l.logf("%s: %s", l.prefix, strings.TrimRight(sc.Text(), "\r"))
		}
	}()
	return l
}

func (l *lineLogger) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.stopped {
		l.tb.Logf(format, args...)
	}
}

// stop waits up to d for the stream to end, then stops logging.
func (l *lineLogger) stop(d time.Duration) {
	select {
	case <-l.done:
	case <-time.After(d):
	}
	l.mu.Lock()
	l.stopped = true
	l.mu.Unlock()
	l.r.Close()
}

// shellQuote renders args as a shell command line.
func shellQuote(args []string) string {
	var b strings.Builder
	for i, a := range args {
		if i > 0 {
			b.WriteByte(' ')
		}
		if a != "" && strings.Trim(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=.,/:@+%") == "" {
			b.WriteString(a)
			continue
		}
		b.WriteString("'" + strings.ReplaceAll(a, "'", `'\''`) + "'")
	}
	return b.String()
}
