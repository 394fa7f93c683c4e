package hostnet

import "github.com/xdp-hostd/xdp-hostd/nsrun"

// NSRunner runs functions inside one network namespace (see package nsrun).
type NSRunner = nsrun.Runner

// NewNSRunner returns a runner for the namespace at path ("" for the
// caller's own).
func NewNSRunner(path string) (*NSRunner, error) { return nsrun.New(path) }
