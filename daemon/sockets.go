package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/unixsock"
)

// A VM's sockets (vhost-user, guest agent) are paths that come from the
// configuration, the API and the libvirt hook (domain XML). The daemon
// binds them, and removes them when the VM goes, so a path must never lead
// to a socket that is not the daemon's to replace: claimSocket keeps them
// under the configured directories and away from the API socket, from
// other VMs' sockets and from any socket something listens on. A stale
// socket (nothing listens on it) is replaced only where the configuration
// file, or the state the previous daemon left, puts that VM's socket.

// hasDotDot reports whether a path has a ".." element.
func hasDotDot(p string) bool {
	for _, e := range strings.Split(p, "/") {
		if e == ".." {
			return true
		}
	}
	return false
}

// resolveSocketPath resolves the symbolic links of a socket path's
// directories (the socket itself is not followed: a link there is refused
// when the socket is claimed). Directories that do not exist yet are kept
// as written.
func resolveSocketPath(p string) (string, error) {
	p = filepath.Clean(p)
	dir, base := filepath.Dir(p), filepath.Base(p)
	var rest []string
	for {
		r, err := filepath.EvalSymlinks(dir)
		if err == nil {
			return filepath.Join(append(append([]string{r}, rest...), base)...), nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return p, nil
		}
		rest = append([]string{filepath.Base(dir)}, rest...)
		dir = parent
	}
}

// resolveDir is a directory with its symbolic links resolved (as written
// when it does not exist yet).
func resolveDir(dir string) string {
	r, err := resolveSocketPath(filepath.Join(dir, "x"))
	if err != nil {
		return filepath.Clean(dir)
	}
	return filepath.Dir(r)
}

// socketAllowed reports whether a resolved path is inside one of dirs.
func socketAllowed(resolved string, dirs []string) bool {
	for _, d := range dirs {
		if r := resolveDir(d); r != "/" && strings.HasPrefix(resolved, r+"/") {
			return true
		}
	}
	return false
}

// socketOwners are the sockets the previous daemon served, as its state
// recorded them: resolved path -> VM.
func socketOwners(st *State) map[string]string {
	out := map[string]string{}
	for _, sv := range st.VMs {
		for _, p := range []string{sv.Config.VhostUserSocket, sv.Config.AgentSocket} {
			if p == "" || !filepath.IsAbs(p) {
				continue
			}
			if r, err := resolveSocketPath(p); err == nil {
				out[r] = sv.Config.Name
			}
		}
	}
	return out
}

// claimSocket checks that the VM may serve its socket (field names it in
// errors: vhost_user_socket or agent_socket) at path and returns the path
// to bind (symbolic links of its directories resolved). Called with d.mu
// held.
func (d *Daemon) claimSocket(vm, field, path, origin string) (string, error) {
	dirs := d.sockDirs
	fix := fmt.Sprintf("give VM %s its own path such as %s", vm, filepath.Join(dirs[0], vm+suffix(field)))
	if !filepath.IsAbs(path) || hasDotDot(path) {
		return "", fmt.Errorf("%w: %s: %q: give an absolute path without '..' (%s)", ErrConfig, field, path, fix)
	}
	resolved, err := resolveSocketPath(path)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %s: %v", ErrConfig, field, path, err)
	}
	if !socketAllowed(resolved, dirs) {
		via := ""
		if resolved != filepath.Clean(path) {
			via = " (through a symbolic link it is " + resolved + ")"
		}
		return "", fmt.Errorf("%w: %s: %s%s is outside the directories VM sockets may be in (vm_socket_dirs: %s): put it under one of them, or add its directory to vm_socket_dirs in the daemon's configuration",
			ErrConfig, field, path, via, strings.Join(dirs, ", "))
	}
	for _, api := range d.apiSockets {
		if resolved == api {
			return "", fmt.Errorf("%w: %s: %s is the daemon's API socket: %s", hostnet.ErrExists, field, path, fix)
		}
	}
	for other, p := range d.ports {
		if p.Socket() == resolved {
			return "", fmt.Errorf("%w: %s: %s is VM %s's vhost-user socket: %s", hostnet.ErrExists, field, path, other, fix)
		}
	}
	for other, a := range d.agents {
		if a.path == resolved {
			return "", fmt.Errorf("%w: %s: %s is VM %s's agent channel: %s", hostnet.ErrExists, field, path, other, fix)
		}
	}
	st, err := unixsock.Probe(resolved)
	if err != nil {
		return "", fmt.Errorf("%s: %s: %w", field, path, err)
	}
	switch st {
	case unixsock.Live:
		return "", fmt.Errorf("%w: %s: %s is a live socket: another program (or QEMU in server mode) listens on it, and xdp-hostd never takes a socket over: %s, or stop what serves it",
			hostnet.ErrExists, field, path, fix)
	case unixsock.NotSocket:
		return "", fmt.Errorf("%w: %s: %s exists and is not a socket: %s", hostnet.ErrExists, field, path, fix)
	case unixsock.Stale:
		if origin == "config" || d.prevSockets[resolved] == vm {
			d.log.Info("replacing a stale socket left for the VM", "vm", vm, field, resolved)
			return resolved, nil
		}
		return "", fmt.Errorf("%w: %s: %s is a socket nothing listens on, and not one xdp-hostd left for VM %s: remove it if it is a leftover (rm %s), or %s",
			hostnet.ErrExists, field, path, vm, resolved, fix)
	}
	return resolved, nil
}

func suffix(field string) string {
	if field == "agent_socket" {
		return ".agent.sock"
	}
	return ".sock"
}
