package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/xdp-hostd/xdp-hostd/daemon"
)

// runDown removes everything a daemon made that outlives it: the pins of the
// configuration's uplinks (unpinning the link detaches the dispatcher, and
// with it every VM program it held and the taps' transmit programs), the
// VMs, ports and programs of its state (the program ID counter stays, so
// IDs are never reused), and stale sockets (API, vhost-user). A daemon that
// runs with state_dir and pin_dir leaves its dataplane forwarding when it
// stops; one without them removes everything itself.
func runDown(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "down", "down --config FILE [--socket PATH]")
	path := fs.String("config", "", "the configuration the daemon ran with")
	socket := fs.String("socket", daemon.DefaultSocket, "the daemon's API socket")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *path == "" {
		return fmt.Errorf("%w: --config FILE is required", errUsage)
	}
	cfg, err := daemon.LoadConfig(*path)
	if err != nil {
		return err
	}
	if _, err := os.Stat(*socket); err == nil {
		if _, err := clientStatus(ctx, *socket); err == nil {
			return fmt.Errorf("a daemon still answers on %s: stop it (SIGTERM) instead", *socket)
		}
		if err := os.Remove(*socket); err != nil {
			return fmt.Errorf("remove stale API socket: %w", err)
		}
		fmt.Fprintf(e.stdout, "removed stale API socket %s\n", *socket)
	}
	var errs []error
	sockets := map[string]bool{}
	for _, u := range cfg.Uplinks {
		for _, vm := range u.VMs {
			for _, p := range []string{vm.VhostUserSocket, vm.AgentSocket} {
				if p != "" {
					sockets[p] = true
				}
			}
		}
	}
	if cfg.StateDir != "" {
		store, err := daemon.OpenStore(cfg.StateDir)
		if err != nil {
			return err
		}
		st, err := store.Load()
		if err == nil {
			for _, vm := range st.VMs {
				for _, p := range []string{vm.Config.VhostUserSocket, vm.Config.AgentSocket} {
					if p != "" {
						sockets[p] = true
					}
				}
			}
			cleared := &daemon.State{NextID: st.NextID}
			if err = store.Save(cleared); err == nil {
				store.PruneObjects(cleared)
				fmt.Fprintf(e.stdout, "cleared state in %s (%d VMs; program IDs go on from %d)\n", cfg.StateDir, len(st.VMs), st.NextID)
			}
		}
		store.Close()
		if err != nil {
			errs = append(errs, err)
		}
	}
	for s := range sockets {
		if removeStaleSocket(s) {
			fmt.Fprintf(e.stdout, "removed stale socket %s\n", s)
		}
	}
	if cfg.PinDir == "" {
		fmt.Fprintln(e.stdout, "the configuration pins nothing (no pin_dir)")
		return errors.Join(errs...)
	}
	for _, u := range cfg.Uplinks {
		dir := filepath.Join(cfg.PinDir, strings.ReplaceAll(u.Name, ".", "_"))
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("remove pins %s: %w", dir, err))
			continue
		}
		fmt.Fprintf(e.stdout, "removed pins %s (the dispatcher on %s is detached)\n", dir, u.Name)
	}
	return errors.Join(errs...)
}

// removeStaleSocket removes a unix socket nobody listens on.
func removeStaleSocket(path string) bool {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return false
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return false
	}
	return os.Remove(path) == nil
}
