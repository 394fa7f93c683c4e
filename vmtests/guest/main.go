//go:build linux

// Command guest is the test program inside VM test guests. /init starts it
// after loading the virtio modules; it opens the virtio-serial port named
// vmproto.PortName, sends a ready event, and then runs the host's commands
// (see package vmproto), answering each with a result or error event.
// Everything it waits for is bounded. It logs to the console (stderr).
//
// It is built static (CGO_ENABLED=0) by vmtests/image and is not useful on
// a host.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/xdp-hostd/xdp-hostd/vmtests/vmproto"
)

// portWait bounds the wait for the virtio-serial port to appear.
const portWait = 30 * time.Second

func main() {
	log.SetFlags(log.Lmicroseconds)
	log.SetPrefix("guest: ")
	if err := run(); err != nil {
		log.Printf("fatal: %v", err)
		os.Exit(1)
	}
}

func run() error {
	path, err := findPort(vmproto.PortName, portWait)
	if err != nil {
		return err
	}
	port, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer port.Close()
	log.Printf("port %s is %s", vmproto.PortName, path)

	a := &agent{out: port, udp: map[int]*udpSocket{}}
	ready, err := readyInfo()
	if err != nil {
		return err
	}
	if err := a.send(vmproto.Event{Type: vmproto.EventReady, Data: mustJSON(ready)}); err != nil {
		return fmt.Errorf("send ready: %w", err)
	}
	return a.serve(port)
}

// findPort returns the /dev node of the virtio-serial port called name.
func findPort(name string, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		dirs, _ := filepath.Glob("/sys/class/virtio-ports/vport*")
		for _, d := range dirs {
			b, err := os.ReadFile(filepath.Join(d, "name"))
			if err == nil && strings.TrimSpace(string(b)) == name {
				dev := filepath.Join("/dev", filepath.Base(d))
				if _, err := os.Stat(dev); err == nil {
					return dev, nil
				}
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no virtio-serial port named %q after %v (ports: %v; is virtio_console loaded?)", name, wait, dirs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type agent struct {
	mu  sync.Mutex // serializes writes to out
	out io.Writer

	udpMu sync.Mutex
	udp   map[int]*udpSocket // UDPListen sockets by port
}

func (a *agent) send(ev vmproto.Event) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	_, err = a.out.Write(append(b, '\n'))
	return err
}

func (a *agent) serve(in io.Reader) error {
	r := bufio.NewReaderSize(in, 1<<16)
	var line []byte
	for {
		chunk, err := r.ReadBytes('\n')
		line = append(line, chunk...)
		if errors.Is(err, io.EOF) {
			// The host side is not connected (or reconnecting): poll.
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if err != nil {
			return fmt.Errorf("read port: %w", err)
		}
		if len(line) > 1<<20 {
			line = line[:0]
			a.send(vmproto.Event{Type: vmproto.EventError, Error: "command line longer than 1 MiB, dropped"})
			continue
		}
		var cmd vmproto.Command
		if err := json.Unmarshal(line, &cmd); err != nil {
			a.send(vmproto.Event{Type: vmproto.EventError, Error: fmt.Sprintf("bad command %q: %v", trim(string(line), 200), err)})
			line = line[:0]
			continue
		}
		line = line[:0]
		go a.handle(cmd)
	}
}

func (a *agent) handle(cmd vmproto.Command) {
	start := time.Now()
	data, err := a.dispatch(cmd)
	ev := vmproto.Event{Type: vmproto.EventResult, ID: cmd.ID, Op: cmd.Op}
	if err != nil {
		ev.Type, ev.Error = vmproto.EventError, err.Error()
		log.Printf("command %d %s failed after %v: %v", cmd.ID, cmd.Op, time.Since(start).Round(time.Millisecond), err)
	} else {
		ev.Data = mustJSON(data)
	}
	if err := a.send(ev); err != nil {
		log.Printf("send result of command %d: %v", cmd.ID, err)
	}
	if cmd.Op == vmproto.OpPoweroff && err == nil {
		time.Sleep(100 * time.Millisecond)
		poweroff()
	}
}

func (a *agent) dispatch(cmd vmproto.Command) (any, error) {
	decode := func(v any) error {
		if len(cmd.Args) == 0 {
			return nil
		}
		if err := json.Unmarshal(cmd.Args, v); err != nil {
			return fmt.Errorf("%s: bad arguments: %w", cmd.Op, err)
		}
		return nil
	}
	switch cmd.Op {
	case vmproto.OpConfigure:
		var c vmproto.Configure
		if err := decode(&c); err != nil {
			return nil, err
		}
		return configure(c)
	case vmproto.OpPing:
		var p vmproto.Ping
		if err := decode(&p); err != nil {
			return nil, err
		}
		return ping(p)
	case vmproto.OpUDPListen:
		var l vmproto.UDPListen
		if err := decode(&l); err != nil {
			return nil, err
		}
		return a.udpListen(l)
	case vmproto.OpUDPSend:
		var s vmproto.UDPSend
		if err := decode(&s); err != nil {
			return nil, err
		}
		return a.udpSend(s)
	case vmproto.OpUDPCount:
		var c vmproto.UDPCount
		if err := decode(&c); err != nil {
			return nil, err
		}
		return a.udpCount(c)
	case vmproto.OpCounters:
		var c vmproto.Counters
		if err := decode(&c); err != nil {
			return nil, err
		}
		return counters(c)
	case vmproto.OpExec:
		var e vmproto.Exec
		if err := decode(&e); err != nil {
			return nil, err
		}
		return execute(e)
	case vmproto.OpPoweroff:
		return struct{}{}, nil
	default:
		return nil, fmt.Errorf("unknown op %q", cmd.Op)
	}
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(map[string]string{"marshal_error": err.Error()})
	}
	return b
}

func trim(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
