package main

import (
	"context"
	"fmt"

	"github.com/xdp-hostd/xdp-hostd/guestprog"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func runVersion(ctx context.Context, e *env, args []string) error {
	if err := parseFlags(newFlags(e, "version", "version"), args); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "xdp-hostd %s (guest ABI %d)\n", version, guestprog.ABIVersion)
	return nil
}
