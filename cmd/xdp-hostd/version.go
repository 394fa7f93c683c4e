package main

import (
	"context"
	"fmt"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// abiVersion is XDP_HOSTD_ABI_VERSION of bpf/include/xdp_hostd.h.
const abiVersion = 1

func runVersion(ctx context.Context, e *env, args []string) error {
	if err := parseFlags(newFlags(e, "version", "version"), args); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "xdp-hostd %s (guest ABI %d)\n", version, abiVersion)
	return nil
}
