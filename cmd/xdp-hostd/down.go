package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/xdp-hostd/xdp-hostd/daemon"
)

// runDown removes what a daemon that did not stop cleanly (SIGKILL, a
// crash) left behind: the pins of the configuration's uplinks (unpinning the
// link detaches the dispatcher, and with it every VM program it held) and
// the API socket. A daemon that stops normally removes them itself.
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
	if cfg.PinDir == "" {
		fmt.Fprintln(e.stdout, "the configuration pins nothing (no pin_dir)")
		return nil
	}
	var errs []error
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
