package hostnet

import "errors"

// Sentinel errors. Every error the package returns about one of these cases
// wraps the sentinel, and its text names what was wrong and how to fix it.
var (
	// ErrNotRoot: the caller lacks the privileges to load and attach BPF.
	ErrNotRoot = errors.New("not permitted")
	// ErrNoSuchInterface: a named network interface does not exist.
	ErrNoSuchInterface = errors.New("no such network interface")
	// ErrNotSupported: the kernel or the device lacks a feature.
	ErrNotSupported = errors.New("not supported")
	// ErrBusy: something else already holds the resource (an XDP program on
	// the uplink, existing pins).
	ErrBusy = errors.New("in use")
	// ErrInvalid: a request is malformed or out of range.
	ErrInvalid = errors.New("invalid request")
	// ErrExists: the request collides with something that exists (VM name,
	// MAC, queue, port).
	ErrExists = errors.New("already exists")
	// ErrNotFound: the request names something that does not exist.
	ErrNotFound = errors.New("not found")
	// ErrBPFFSMissing: no BPF filesystem where pins are to go.
	ErrBPFFSMissing = errors.New("BPF filesystem missing")
)
