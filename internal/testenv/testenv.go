// Package testenv decides what a test does when the machine lacks what it
// needs (root, a tool): it skips with the fix in the message, unless
// XDP_HOSTD_REQUIRE_ROOT_TESTS=1 (set by `make test` and CI), which makes
// it fail instead, so that a CI run cannot pass by skipping.
//
// It imports nothing of the project, so that every package's tests can use
// it (hostnet/testnet re-exports it for tests that build topologies).
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// RequireEnv is the variable that turns skips into failures.
const RequireEnv = "XDP_HOSTD_REQUIRE_ROOT_TESTS"

// Required reports whether skips for root or tools are failures.
func Required() bool { return os.Getenv(RequireEnv) == "1" }

// SkipOrFail skips tb with reason (say what is missing and how to get
// it), or fails it when Required.
func SkipOrFail(tb testing.TB, reason string) {
	tb.Helper()
	if Required() {
		tb.Fatal(reason + " (" + RequireEnv + "=1 makes this a failure)")
	}
	tb.Skip(reason)
}

// RequireRoot skips (or fails) tb unless it runs as root; why says what
// needs root.
func RequireRoot(tb testing.TB, why string) {
	tb.Helper()
	if os.Geteuid() != 0 {
		SkipOrFail(tb, "needs root ("+why+"): run as root, e.g. sudo go test")
	}
}

// RequireTool returns the path of the program name, or skips (or fails)
// tb with install saying how to get it.
func RequireTool(tb testing.TB, name, install string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		SkipOrFail(tb, "needs "+name+": "+install)
	}
	return p
}
