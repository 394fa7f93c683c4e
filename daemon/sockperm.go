package daemon

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
)

// VM sockets (vhost-user, guest agent) are connected to by QEMU, which
// libvirt runs as an unprivileged user (Debian: libvirt-qemu, with the
// supplementary group kvm); libvirt does not change the owner of a socket
// QEMU connects to (mode='client'). The daemon therefore gives each VM
// socket an owner, a group and a mode: vm_socket_owner, vm_socket_group
// and vm_socket_mode in the configuration, by default libvirt's QEMU user
// and group where they exist (DefaultQEMUUser, DefaultQEMUGroup), mode
// 0660.

// DefaultQEMUUser and DefaultQEMUGroup are who libvirt runs QEMU as on
// Debian and Ubuntu (qemu.conf's user and, among its groups, kvm): VM
// sockets get them by default when they exist on the host.
const (
	DefaultQEMUUser  = "libvirt-qemu"
	DefaultQEMUGroup = "kvm"
)

// DefaultVMSocketMode is a VM socket's mode when the configuration does
// not say: its owner and group may connect.
const DefaultVMSocketMode = 0o660

// sockPerm is what a VM socket is given: uid and gid (-1: unchanged) and mode.
type sockPerm struct {
	uid, gid int
	mode     os.FileMode
	// who describes it for logs and errors ("libvirt-qemu:kvm 0660").
	who string
}

// socketPerm resolves the configuration's vm_socket_owner, vm_socket_group
// and vm_socket_mode (names or numeric IDs; "" for the defaults).
func (c *Config) socketPerm() (sockPerm, error) {
	p := sockPerm{uid: -1, gid: -1, mode: DefaultVMSocketMode}
	owner, group := c.VMSocketOwner, c.VMSocketGroup
	if owner == "" && os.Geteuid() == 0 { // only root may give a file away
		if _, err := user.Lookup(DefaultQEMUUser); err == nil {
			owner = DefaultQEMUUser
		}
	}
	if group == "" {
		if _, err := user.LookupGroup(DefaultQEMUGroup); err == nil && owner == DefaultQEMUUser {
			group = DefaultQEMUGroup
		}
	}
	if owner != "" {
		u, err := lookupUser(owner)
		if err != nil {
			return p, fmt.Errorf("vm_socket_owner: %w", err)
		}
		p.uid, _ = strconv.Atoi(u.Uid)
		if group == "" {
			p.gid, _ = strconv.Atoi(u.Gid)
		}
	}
	if group != "" {
		g, err := lookupGroup(group)
		if err != nil {
			return p, fmt.Errorf("vm_socket_group: %w", err)
		}
		p.gid, _ = strconv.Atoi(g.Gid)
	}
	if c.VMSocketMode != "" {
		m, err := strconv.ParseUint(c.VMSocketMode, 8, 32)
		if err != nil || m > 0o777 {
			return p, fmt.Errorf("vm_socket_mode: %q: give an octal mode such as \"0660\"", c.VMSocketMode)
		}
		if m&0o002 != 0 {
			return p, fmt.Errorf("vm_socket_mode: %q lets any user connect to a VM's socket (and be its device or its agent): give the QEMU user's owner or group the access, such as \"0660\"", c.VMSocketMode)
		}
		p.mode = os.FileMode(m)
	}
	p.who = fmt.Sprintf("uid %d gid %d mode %04o", p.uid, p.gid, p.mode)
	if owner != "" || group != "" {
		p.who = fmt.Sprintf("%s:%s %04o", owner, group, p.mode)
	}
	return p, nil
}

func lookupUser(s string) (*user.User, error) {
	if _, err := strconv.Atoi(s); err == nil {
		if u, err := user.LookupId(s); err == nil {
			return u, nil
		}
		return &user.User{Uid: s, Gid: "-1", Username: s}, nil
	}
	u, err := user.Lookup(s)
	if err != nil {
		return nil, fmt.Errorf("no user %q on this host: name the user QEMU runs as (libvirt: user in /etc/libvirt/qemu.conf), or a numeric uid", s)
	}
	return u, nil
}

func lookupGroup(s string) (*user.Group, error) {
	if _, err := strconv.Atoi(s); err == nil {
		return &user.Group{Gid: s, Name: s}, nil
	}
	g, err := user.LookupGroup(s)
	if err != nil {
		return nil, fmt.Errorf("no group %q on this host: name a group QEMU runs with (libvirt: group in /etc/libvirt/qemu.conf, or kvm), or a numeric gid", s)
	}
	return g, nil
}

// apply gives the socket at path its owner, group and mode.
func (p sockPerm) apply(path string) error {
	if p.uid != -1 || p.gid != -1 {
		if err := os.Lchown(path, p.uid, p.gid); err != nil {
			return fmt.Errorf("give VM socket %s to %s: %w", path, p.who, err)
		}
	}
	if err := os.Chmod(path, p.mode); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("VM socket %s vanished: %w", path, err)
		}
		return fmt.Errorf("VM socket %s mode %04o: %w", path, p.mode, err)
	}
	return nil
}
