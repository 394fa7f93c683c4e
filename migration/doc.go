// Package migration is the document a VM moves between two xdp-hostd
// daemons in: the VM's registration, its guest program (the object, its
// hash and the IDs it had) and the contents of the program's own maps.
// It also reads those maps out of the kernel and writes them into the
// maps of the program loaded on the destination.
//
// The document is JSON with a format name and a version; a reader refuses
// any other format or version. Keys and values are hex.
package migration

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Format names the document; Version is the one this package writes and
// reads.
const (
	Format  = "xdp-hostd-vm-export"
	Version = 1
)

// ErrDocument is wrapped by every error about a document's content.
var ErrDocument = errors.New("migration document")

// Document is one VM, exported by the daemon it runs on.
type Document struct {
	Format  string `json:"format"`
	Version int    `json:"version"`
	// Final: the source VM's program was frozen (see hostnet.VM.Freeze)
	// before its maps were read, so they hold everything it wrote. A
	// document that is not final is a copy taken while the program ran.
	Final      bool      `json:"final"`
	ExportedAt time.Time `json:"exported_at"`
	// Host is the source host's name (for the program's history).
	Host    string   `json:"host"`
	VM      VM       `json:"vm"`
	Program *Program `json:"program,omitempty"`
	// Maps are the contents of the program's state maps (its own maps,
	// .data and .bss; not program arrays, .rodata or the host's maps).
	Maps []Map `json:"maps,omitempty"`
}

// VM is the VM's registration. Uplink, queues, tap and sockets are the
// source's; the destination may give its own.
type VM struct {
	Name      string `json:"name"`
	UUID      string `json:"uuid,omitempty"`
	MAC       string `json:"mac"`
	Delivery  string `json:"delivery,omitempty"`
	Uplink    string `json:"uplink"`
	Queues    []int  `json:"queues,omitempty"`
	TapQueues int    `json:"tap_queues,omitempty"`
	// Ports are the extra ports of the VM's port table (port 0, the
	// uplink, is every host's own), by interface name.
	Ports          []Port `json:"ports,omitempty"`
	BusyPollMicros int    `json:"busy_poll_us,omitempty"`
}

// Port is an extra port of the VM's port table.
type Port struct {
	Port    uint32 `json:"port"`
	Ifname  string `json:"ifname"`
	CrossVM bool   `json:"cross_vm,omitempty"`
}

// Program is the VM's guest program.
type Program struct {
	// ID is the program's ID on the source daemon; IDs are per daemon,
	// and the destination gives the program an ID of its own.
	ID       uint64    `json:"id"`
	SHA256   string    `json:"sha256"`
	Entry    string    `json:"entry"`
	LoadedAt time.Time `json:"loaded_at"`
	Object   []byte    `json:"object"` // base64 in JSON
	// History are the IDs the program had on daemons before the source,
	// oldest first.
	History []Origin `json:"history,omitempty"`
}

// Origin is an ID a program had on one daemon.
type Origin struct {
	Host     string    `json:"host"`
	ID       uint64    `json:"id"`
	SHA256   string    `json:"sha256"`
	LoadedAt time.Time `json:"loaded_at"`
	// MigratedAt is when the program left that daemon.
	MigratedAt time.Time `json:"migrated_at"`
}

// Map is the content of one map.
type Map struct {
	Name       string `json:"name"`
	Type       string `json:"type"` // ebpf.MapType's name: Hash, PerCPUArray, LPMTrie, ...
	KeySize    uint32 `json:"key_size"`
	ValueSize  uint32 `json:"value_size"`
	MaxEntries uint32 `json:"max_entries"`
	// CPUs is the number of per-CPU values of each entry of a per-CPU
	// map (the source's possible CPUs); 0 for other maps.
	CPUs    int     `json:"cpus,omitempty"`
	Entries []Entry `json:"entries"`
}

// Entry is one element. A queue or stack has values only (in the order
// they leave the map: the queue's head, the stack's top first); a per-CPU
// map has PerCPU instead of Value.
type Entry struct {
	Key    Hex   `json:"key,omitempty"`
	Value  Hex   `json:"value,omitempty"`
	PerCPU []Hex `json:"per_cpu,omitempty"`
}

// Hex is bytes written as a hex string.
type Hex []byte

// MarshalJSON writes h as a hex string.
func (h Hex) MarshalJSON() ([]byte, error) { return json.Marshal(hex.EncodeToString(h)) }

// UnmarshalJSON reads a hex string.
func (h *Hex) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := hex.DecodeString(s)
	if err != nil {
		return fmt.Errorf("not hex: %w", err)
	}
	*h = v
	return nil
}

// New starts a document of this version.
func New() *Document {
	return &Document{Format: Format, Version: Version, ExportedAt: time.Now().UTC()}
}

// MaxSize is the largest document Decode reads.
const MaxSize = 64 << 20

// Decode reads and checks a document: its format and version, and that
// its parts agree (Validate).
func Decode(b []byte) (*Document, error) {
	if len(b) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes; the limit is %d", ErrDocument, len(b), MaxSize)
	}
	// The version is read first, alone, so that a document of another
	// version is refused as such rather than for a field it has.
	var head struct {
		Format  string `json:"format"`
		Version int    `json:"version"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return nil, fmt.Errorf("%w: not a JSON object: %v", ErrDocument, err)
	}
	if head.Format != Format {
		return nil, fmt.Errorf("%w: format %q; want %q (export it with 'xdp-hostd vm export')", ErrDocument, head.Format, Format)
	}
	if head.Version != Version {
		return nil, fmt.Errorf("%w: version %d; this xdp-hostd reads version %d: export and import with daemons of the same version", ErrDocument, head.Version, Version)
	}
	var d Document
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDocument, err)
	}
	if err := d.Validate(); err != nil {
		return nil, err
	}
	return &d, nil
}

// Encode writes the document as JSON.
func (d *Document) Encode() ([]byte, error) {
	if err := d.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(d)
}

// Validate checks that the document's parts agree: format and version,
// the VM named, the object's hash, every entry's sizes.
func (d *Document) Validate() error {
	if d.Format != Format || d.Version != Version {
		return fmt.Errorf("%w: format %q version %d; this xdp-hostd reads %q version %d", ErrDocument, d.Format, d.Version, Format, Version)
	}
	if d.VM.Name == "" || d.VM.MAC == "" {
		return fmt.Errorf("%w: vm: name and mac are required", ErrDocument)
	}
	if p := d.Program; p != nil {
		if len(p.Object) == 0 {
			return fmt.Errorf("%w: program: no object", ErrDocument)
		}
		sum := sha256.Sum256(p.Object)
		if hex.EncodeToString(sum[:]) != p.SHA256 {
			return fmt.Errorf("%w: program: the object's SHA-256 is %x, not %s as the document says: the document is damaged", ErrDocument, sum, p.SHA256)
		}
	} else if len(d.Maps) > 0 {
		return fmt.Errorf("%w: maps without a program", ErrDocument)
	}
	seen := map[string]bool{}
	for _, m := range d.Maps {
		if seen[m.Name] {
			return fmt.Errorf("%w: map %s listed twice", ErrDocument, m.Name)
		}
		seen[m.Name] = true
		if err := m.validate(); err != nil {
			return err
		}
	}
	return nil
}

func (m *Map) validate() error {
	t, ok := mapTypes[m.Type]
	if !ok {
		return fmt.Errorf("%w: map %s: type %q cannot be carried (carried: %s)", ErrDocument, m.Name, m.Type, typeNames())
	}
	if uint32(len(m.Entries)) > m.MaxEntries {
		return fmt.Errorf("%w: map %s: %d entries, more than its %d", ErrDocument, m.Name, len(m.Entries), m.MaxEntries)
	}
	pcpu := perCPU(t)
	if pcpu != (m.CPUs > 0) {
		return fmt.Errorf("%w: map %s: cpus %d does not fit type %s", ErrDocument, m.Name, m.CPUs, m.Type)
	}
	keyless := !hasKeys(t)
	for i, e := range m.Entries {
		switch {
		case keyless && len(e.Key) != 0:
			return fmt.Errorf("%w: map %s entry %d: a %s has no keys", ErrDocument, m.Name, i, m.Type)
		case !keyless && uint32(len(e.Key)) != m.KeySize:
			return fmt.Errorf("%w: map %s entry %d: key of %d bytes; the map's are %d", ErrDocument, m.Name, i, len(e.Key), m.KeySize)
		case pcpu && len(e.PerCPU) != m.CPUs:
			return fmt.Errorf("%w: map %s entry %d: %d per-CPU values; the map has %d CPUs", ErrDocument, m.Name, i, len(e.PerCPU), m.CPUs)
		case !pcpu && (uint32(len(e.Value)) != m.ValueSize || e.PerCPU != nil):
			return fmt.Errorf("%w: map %s entry %d: value of %d bytes; the map's are %d", ErrDocument, m.Name, i, len(e.Value), m.ValueSize)
		}
		for c, v := range e.PerCPU {
			if uint32(len(v)) != m.ValueSize {
				return fmt.Errorf("%w: map %s entry %d CPU %d: value of %d bytes; the map's are %d", ErrDocument, m.Name, i, c, len(v), m.ValueSize)
			}
		}
	}
	return nil
}
