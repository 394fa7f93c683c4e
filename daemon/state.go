package daemon

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/migration"
)

// The daemon's durable state: a JSON document (state.json) plus the guest
// objects it names (objects/<sha256>), in the state directory.
//
// Every change is written as a whole new file that is fsync'd, renamed over
// the old one, and followed by an fsync of the directory: a reader (the
// next daemon) sees either the old state or the new one, never a mix, after
// a crash or power loss at any point. Objects are written (and fsync'd)
// before the state that names them. The state is small (tens of VMs, one
// record each, object bodies kept apart), so rewriting it whole costs less
// than a database would, needs no dependency, and can be read and repaired
// with a text editor. An exclusive flock on the directory keeps a second
// daemon out.

// StateVersion is the version of state.json this daemon writes.
const StateVersion = 1

// State is what survives a restart.
type State struct {
	Version int `json:"version"`
	// NextID is the ID the next accepted program gets. It is written
	// before a program is installed, so an ID is never handed out twice,
	// whatever point the daemon is killed at.
	NextID uint64    `json:"next_id"`
	VMs    []StateVM `json:"vms"`
}

// StateVM is one VM: its configuration (ports included, the tap's name
// resolved), where it came from, and its guest program if any.
type StateVM struct {
	Uplink string `json:"uplink"`
	// Origin is "config" (from the configuration file; it goes when it
	// leaves the file) or "api" (added at run time; it stays until
	// removed).
	Origin  string        `json:"origin"`
	Config  VMConfig      `json:"config"`
	Program *StateProgram `json:"program,omitempty"`
}

// StateProgram is a VM's guest program; its object is objects/<SHA256>.
type StateProgram struct {
	ID       uint64    `json:"id"`
	SHA256   string    `json:"sha256"`
	Entry    string    `json:"entry"`
	Size     int       `json:"size"`
	LoadedAt time.Time `json:"loaded_at"`
	// History are the IDs the program had on other daemons (migration).
	History []migration.Origin `json:"history,omitempty"`
}

func (s *State) vm(name string) *StateVM {
	for i := range s.VMs {
		if s.VMs[i].Config.Name == name {
			return &s.VMs[i]
		}
	}
	return nil
}

// Store is the state directory.
type Store struct {
	dir  string
	lock *os.File
}

const (
	stateFile  = "state.json"
	objectsDir = "objects"
)

// OpenStore opens (creating it, mode 0700) the state directory and locks it.
func OpenStore(dir string) (*Store, error) {
	if err := os.MkdirAll(filepath.Join(dir, objectsDir), 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("state directory %s is in use by another xdp-hostd: stop it first, or give this one another state_dir", dir)
		}
		return nil, fmt.Errorf("lock state directory %s: %w", dir, err)
	}
	// Leftovers of writes a crash interrupted.
	if tmps, _ := filepath.Glob(filepath.Join(dir, "*.tmp")); len(tmps) > 0 {
		for _, t := range tmps {
			os.Remove(t)
		}
	}
	if tmps, _ := filepath.Glob(filepath.Join(dir, objectsDir, "*.tmp")); len(tmps) > 0 {
		for _, t := range tmps {
			os.Remove(t)
		}
	}
	return &Store{dir: dir, lock: f}, nil
}

// Dir is the state directory.
func (s *Store) Dir() string { return s.dir }

// Close unlocks the directory.
func (s *Store) Close() error {
	if s == nil || s.lock == nil {
		return nil
	}
	err := s.lock.Close()
	s.lock = nil
	return err
}

// Load reads the state; a directory without one gives an empty state.
func (s *Store) Load() (*State, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return &State{Version: StateVersion, NextID: 1}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("state %s is damaged (%v): move it away to start from the configuration alone (program IDs then restart at 1)", filepath.Join(s.dir, stateFile), err)
	}
	if st.Version != StateVersion {
		return nil, fmt.Errorf("state %s has version %d; this xdp-hostd reads version %d", filepath.Join(s.dir, stateFile), st.Version, StateVersion)
	}
	if st.NextID == 0 {
		st.NextID = 1
	}
	return &st, nil
}

// Save writes the state atomically and durably.
func (s *Store) Save(st *State) error {
	st.Version = StateVersion
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := writeDurable(s.dir, stateFile, append(b, '\n')); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	return nil
}

// PutObject stores a guest object under its hash (idempotent) and returns
// the hash.
func (s *Store) PutObject(obj []byte) (string, error) {
	sum := sha256.Sum256(obj)
	name := hex.EncodeToString(sum[:])
	// A stored copy is kept only if it is intact: a damaged one is
	// written again.
	if b, err := os.ReadFile(filepath.Join(s.dir, objectsDir, name)); err == nil && bytes.Equal(b, obj) {
		return name, nil
	}
	if err := writeDurable(filepath.Join(s.dir, objectsDir), name, obj); err != nil {
		return "", fmt.Errorf("store object: %w", err)
	}
	return name, nil
}

// Object reads a stored object and checks its hash.
func (s *Store) Object(sum string) ([]byte, error) {
	if len(sum) != 64 || strings.Trim(sum, "0123456789abcdef") != "" {
		return nil, fmt.Errorf("object name %q is not a sha256", sum)
	}
	b, err := os.ReadFile(filepath.Join(s.dir, objectsDir, sum))
	if err != nil {
		return nil, fmt.Errorf("read object %s: %w", sum, err)
	}
	got := sha256.Sum256(b)
	if hex.EncodeToString(got[:]) != sum {
		return nil, fmt.Errorf("object %s is damaged (its hash differs)", sum)
	}
	return b, nil
}

// PruneObjects removes the objects st does not name.
func (s *Store) PruneObjects(st *State) {
	keep := map[string]bool{}
	for _, v := range st.VMs {
		if v.Program != nil {
			keep[v.Program.SHA256] = true
		}
	}
	ents, _ := os.ReadDir(filepath.Join(s.dir, objectsDir))
	for _, e := range ents {
		if !keep[e.Name()] {
			os.Remove(filepath.Join(s.dir, objectsDir, e.Name()))
		}
	}
}

// writeDurable writes dir/name through a temporary file, fsync, rename and
// an fsync of dir.
func writeDurable(dir, name string, b []byte) (err error) {
	f, err := os.CreateTemp(dir, name+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), filepath.Join(dir, name)); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
