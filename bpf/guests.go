package bpf

import (
	"embed"
	"fmt"
)

//go:embed guests/*.o examples/*.o
var guests embed.FS

// Guest returns the compiled guest program guests/<name>.o shipped with the
// host: "pass" is the built-in VM program; the others are used by tests.
func Guest(name string) ([]byte, error) {
	b, err := guests.ReadFile("guests/" + name + ".o")
	if err != nil {
		return nil, fmt.Errorf("built-in guest program %q: %w", name, err)
	}
	return b, nil
}

// Example returns the compiled example guest program examples/<name>.o:
// "bridge" (a learning bridge), "ddos_filter" (drop by source prefix),
// "port_forward" (forward by destination port).
func Example(name string) ([]byte, error) {
	b, err := guests.ReadFile("examples/" + name + ".o")
	if err != nil {
		return nil, fmt.Errorf("example guest program %q: %w", name, err)
	}
	return b, nil
}
