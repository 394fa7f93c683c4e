package main

import (
	"context"
	"fmt"

	"github.com/xdp-hostd/xdp-hostd/daemon"
)

func runRun(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "run", "run --config FILE")
	path := fs.String("config", "", "the configuration file (JSON; see examples/xdp-hostd.json)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *path == "" {
		return fmt.Errorf("%w: --config FILE is required (see examples/xdp-hostd.json)", errUsage)
	}
	cfg, err := daemon.LoadConfig(*path)
	if err != nil {
		return err
	}
	return daemon.Run(ctx, cfg, e.log)
}
