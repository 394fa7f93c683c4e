package bpf

import (
	"embed"
	"fmt"
)

//go:embed guests/*.o
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
