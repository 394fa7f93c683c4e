package main

import (
	"context"
	"fmt"

	"github.com/xdp-hostd/xdp-hostd/daemon"
)

func runRun(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "run", "run --config FILE [--socket PATH] [--socket-group GROUP] [--metrics 127.0.0.1:PORT]")
	path := fs.String("config", "", "the configuration file (JSON; see examples/xdp-hostd.json)")
	socket := fs.String("socket", daemon.DefaultSocket, "the API's unix socket")
	group := fs.String("socket-group", "", "group that may use the API socket (mode 0660)")
	metrics := fs.String("metrics", "", "serve Prometheus metrics on this loopback address (e.g. 127.0.0.1:9464); off by default")
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
	return daemon.Run(ctx, cfg, daemon.RunOptions{Socket: *socket, SocketGroup: *group, Metrics: *metrics}, e.log)
}
