// Package vmproto is the protocol between a VM test on the host and the test
// program inside the guest (vmtests/guest): newline-delimited JSON over one
// virtio-serial port named PortName.
//
// The host sends Commands; the guest answers each with exactly one Event of
// type "result" or "error" carrying the command's ID. The guest sends one
// "ready" event (ID 0) when it is up, and may send "error" events with ID 0
// for problems not tied to a command (an unparsable line, for example).
// The guest runs commands concurrently, so a slow command (UDPCount) does not
// hold up the others; every command is bounded by its own timeout.
package vmproto

import (
	"encoding/json"
	"fmt"
	"time"
)

// PortName is the name of the virtio-serial port the guest program opens
// (/sys/class/virtio-ports/vport*/name).
const PortName = "xdp-hostd.vmtest.0"

// Version is the protocol version the guest reports in its ready event.
const Version = 1

// Op names a command.
type Op string

// The commands the guest understands.
const (
	OpConfigure Op = "configure"
	OpPing      Op = "ping"
	OpUDPListen Op = "udp_listen"
	OpUDPSend   Op = "udp_send"
	OpUDPCount  Op = "udp_count"
	OpCounters  Op = "counters"
	OpExec      Op = "exec"
	OpPoweroff  Op = "poweroff"
)

// Command is one request from the host, one JSON line.
type Command struct {
	ID   uint64          `json:"id"`
	Op   Op              `json:"op"`
	Args json.RawMessage `json:"args,omitempty"`
}

// EventType names an event.
type EventType string

// The events the guest sends.
const (
	EventReady  EventType = "ready"
	EventResult EventType = "result"
	EventError  EventType = "error"
)

// Event is one message from the guest, one JSON line.
type Event struct {
	Type  EventType       `json:"type"`
	ID    uint64          `json:"id,omitempty"`
	Op    Op              `json:"op,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
	Error string          `json:"error,omitempty"`
}

// Request is the typed argument of one command. Budget is how long the guest
// may legitimately take to answer it (zero: the host's default).
type Request interface {
	Op() Op
	Budget() time.Duration
}

// NewCommand marshals req into a Command with the given ID.
func NewCommand(id uint64, req Request) (Command, error) {
	args, err := json.Marshal(req)
	if err != nil {
		return Command{}, fmt.Errorf("marshal %s arguments: %w", req.Op(), err)
	}
	return Command{ID: id, Op: req.Op(), Args: args}, nil
}

// Ready is the data of the ready event.
type Ready struct {
	Version    int         `json:"version"`
	Kernel     string      `json:"kernel"`
	UptimeSec  float64     `json:"uptime_sec"`
	Interfaces []Interface `json:"interfaces"`
}

// Interface describes one guest network interface.
type Interface struct {
	Name  string   `json:"name"`
	Index int      `json:"index"`
	MAC   string   `json:"mac,omitempty"`
	MTU   int      `json:"mtu"`
	Up    bool     `json:"up"`
	Addrs []string `json:"addrs,omitempty"`
}

// Neighbor is a static ARP entry.
type Neighbor struct {
	IP  string `json:"ip"`
	MAC string `json:"mac"`
}

// Configure finds the interface with the given MAC (or Name), optionally
// sets its MTU, adds Addr (CIDR, e.g. "10.0.0.2/24"), brings it up, adds the
// static neighbors, and waits up to CarrierTimeout (default 5 s) for carrier.
type Configure struct {
	MAC            string        `json:"mac,omitempty"`
	Name           string        `json:"name,omitempty"`
	Addr           string        `json:"addr,omitempty"`
	MTU            int           `json:"mtu,omitempty"`
	Neighbors      []Neighbor    `json:"neighbors,omitempty"`
	CarrierTimeout time.Duration `json:"carrier_timeout,omitempty"`
	// Channels, if set, is the number of queue pairs to enable (ethtool
	// -L combined N) before bringing the interface up.
	Channels int `json:"channels,omitempty"`
}

func (Configure) Op() Op                  { return OpConfigure }
func (c Configure) Budget() time.Duration { return c.CarrierTimeout + 10*time.Second }

// ConfigureResult is the result of Configure.
type ConfigureResult struct {
	Interface
	Carrier bool `json:"carrier"`
	// Channels is the combined channel count after Configure.Channels.
	Channels int `json:"channels,omitempty"`
}

// Ping sends Count ICMP echo requests (default 3) to Addr, one per Interval
// (default 200 ms), and waits up to Timeout (default 5 s) in all for replies.
type Ping struct {
	Addr     string        `json:"addr"`
	Count    int           `json:"count,omitempty"`
	Interval time.Duration `json:"interval,omitempty"`
	Timeout  time.Duration `json:"timeout,omitempty"`
}

func (Ping) Op() Op                  { return OpPing }
func (p Ping) Budget() time.Duration { return p.Timeout + 10*time.Second }

// PingResult is the result of Ping.
type PingResult struct {
	Sent     int             `json:"sent"`
	Received int             `json:"received"`
	RTTs     []time.Duration `json:"rtts,omitempty"`
}

// UDPListen binds a UDP socket on Port (all addresses) that a later UDPCount
// reads and a later UDPSend with SrcPort == Port sends from. Binding before
// traffic starts is what makes counting race-free.
type UDPListen struct {
	Port int `json:"port"`
}

func (UDPListen) Op() Op                { return OpUDPListen }
func (UDPListen) Budget() time.Duration { return 0 }

// UDPListenResult is the result of UDPListen.
type UDPListenResult struct {
	Port int `json:"port"`
}

// UDPSend sends Count datagrams to Dst ("ip:port"), each Size bytes
// (default 64, at least the marker) starting with Marker followed by a
// sequence number, Interval apart (default: back to back). With SrcPort it
// sends from that port (from the UDPListen socket if one is bound there).
type UDPSend struct {
	Dst      string        `json:"dst"`
	SrcPort  int           `json:"src_port,omitempty"`
	Count    int           `json:"count"`
	Size     int           `json:"size,omitempty"`
	Marker   string        `json:"marker"`
	Interval time.Duration `json:"interval,omitempty"`
}

func (UDPSend) Op() Op { return OpUDPSend }
func (s UDPSend) Budget() time.Duration {
	return time.Duration(s.Count)*s.Interval + 10*time.Second
}

// UDPSendResult is the result of UDPSend.
type UDPSendResult struct {
	Sent  int `json:"sent"`
	Bytes int `json:"bytes"`
}

// UDPCount counts datagrams that start with Marker arriving on Port (bound
// by UDPListen before, or bound now) until Want have arrived (0: no early
// stop) or Timeout (default 5 s) has passed, then closes the socket.
type UDPCount struct {
	Port    int           `json:"port"`
	Marker  string        `json:"marker"`
	Want    int           `json:"want,omitempty"`
	Timeout time.Duration `json:"timeout,omitempty"`
}

func (UDPCount) Op() Op                  { return OpUDPCount }
func (c UDPCount) Budget() time.Duration { return c.Timeout + 10*time.Second }

// UDPCountResult is the result of UDPCount.
type UDPCountResult struct {
	Matched int `json:"matched"` // datagrams with the marker
	Other   int `json:"other"`   // datagrams without it
	Bytes   int `json:"bytes"`
	Seqs    int `json:"distinct_seqs"` // distinct sequence numbers among Matched
}

// Counters reads /sys/class/net/IF/statistics of the interface with the
// given MAC (or Name).
type Counters struct {
	MAC  string `json:"mac,omitempty"`
	Name string `json:"name,omitempty"`
}

func (Counters) Op() Op                { return OpCounters }
func (Counters) Budget() time.Duration { return 0 }

// CountersResult is the result of Counters.
type CountersResult struct {
	Name      string `json:"name"`
	RXPackets uint64 `json:"rx_packets"`
	TXPackets uint64 `json:"tx_packets"`
	RXBytes   uint64 `json:"rx_bytes"`
	TXBytes   uint64 `json:"tx_bytes"`
	RXDropped uint64 `json:"rx_dropped"`
	TXDropped uint64 `json:"tx_dropped"`
	RXErrors  uint64 `json:"rx_errors"`
	TXErrors  uint64 `json:"tx_errors"`
	// Ethtool are the driver's counters (ethtool -S), such as virtio-net's
	// per-queue rx_queue_1_packets.
	Ethtool map[string]uint64 `json:"ethtool,omitempty"`
}

// Exec runs Argv in the guest (busybox applets are on PATH) with a Timeout
// (default 10 s) and returns its combined output, trimmed to 64 KiB.
type Exec struct {
	Argv    []string      `json:"argv"`
	Timeout time.Duration `json:"timeout,omitempty"`
}

func (Exec) Op() Op                  { return OpExec }
func (e Exec) Budget() time.Duration { return e.Timeout + 10*time.Second }

// ExecResult is the result of Exec. A non-zero exit is a result, not an error.
type ExecResult struct {
	ExitCode int    `json:"exit_code"`
	Output   string `json:"output"`
}

// Poweroff answers, then powers the guest off.
type Poweroff struct{}

func (Poweroff) Op() Op                { return OpPoweroff }
func (Poweroff) Budget() time.Duration { return 0 }
