package testenv

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// With XDP_HOSTD_REQUIRE_ROOT_TESTS=1 a missing tool fails the test; without
// it, the test skips. Run in a child process, as a failing test is the point.
func TestSkipOrFail(t *testing.T) {
	if os.Getenv("TESTENV_CHILD") == "1" {
		RequireTool(t, "xdp-hostd-no-such-tool", "it does not exist")
		t.Log("not reached")
		return
	}
	for _, tc := range []struct {
		required string
		fails    bool
	}{{"", false}, {"0", false}, {"1", true}} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestSkipOrFail$", "-test.v")
		cmd.Env = append(os.Environ(), "TESTENV_CHILD=1", RequireEnv+"="+tc.required)
		out, err := cmd.CombinedOutput()
		if failed := err != nil; failed != tc.fails {
			t.Errorf("%s=%q: failed %v, want %v\n%s", RequireEnv, tc.required, failed, tc.fails, out)
		}
		want := "--- SKIP"
		if tc.fails {
			want = "--- FAIL"
		}
		if !strings.Contains(string(out), want) || !strings.Contains(string(out), "needs xdp-hostd-no-such-tool: it does not exist") || strings.Contains(string(out), "not reached") {
			t.Errorf("%s=%q: want %s naming the tool:\n%s", RequireEnv, tc.required, want, out)
		}
	}
}
