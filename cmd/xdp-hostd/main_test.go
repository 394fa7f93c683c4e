package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/guestprog"
)

func runCmd(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(context.Background(), &env{stdout: &out, stderr: &errb}, args)
	return code, out.String(), errb.String()
}

func TestHelpPerSubcommand(t *testing.T) {
	for _, c := range commands {
		code, _, stderr := runCmd(c.name, "-h")
		if code != 0 {
			t.Errorf("%s -h: exit %d, stderr %q", c.name, code, stderr)
		}
		if !strings.Contains(stderr, "usage: xdp-hostd "+c.name) {
			t.Errorf("%s -h: no usage line in %q", c.name, stderr)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"nope"},
		{"demo", "--packets", "0"},
		{"demo", "extra"},
		{"bench"},
		{"bench", "dispatch", "--repeat", "1"},
	} {
		if code, _, stderr := runCmd(args...); code != 2 || stderr == "" {
			t.Errorf("%q: exit %d (want 2), stderr %q", args, code, stderr)
		}
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := runCmd("version")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("guest ABI %d", guestprog.ABIVersion)) {
		t.Errorf("version: exit %d, %q", code, out)
	}
}

// vm show and vm list print what the daemon warns about a VM.
func TestPrintVMWarnings(t *testing.T) {
	var b bytes.Buffer
	vs := []daemon.VMStatus{{Name: "vm1", Warnings: []string{"uplink eth1: its veth peer drops redirected frames"}}, {Name: "vm2"}}
	if err := printVMs(&b, false, vs); err != nil {
		t.Fatal(err)
	}
	if got := b.String(); strings.Count(got, "WARNING") != 1 || !strings.Contains(got, "VM vm1: WARNING: uplink eth1: its veth peer drops redirected frames\n") {
		t.Errorf("vm show:\n%s", got)
	}
}

func TestParseRateModes(t *testing.T) {
	if m, err := parseModes("zerocopy, copy,zerocopy"); err != nil || len(m) != 2 || m[0] != "zerocopy" || m[1] != "copy" {
		t.Errorf("parseModes = %v, %v", m, err)
	}
	for _, in := range []string{"", "zero-copy", "copy,"} {
		if _, err := parseModes(in); err == nil || !strings.Contains(err.Error(), "want copy, zerocopy") {
			t.Errorf("parseModes(%q): %v", in, err)
		}
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]float64{"300000": 300e3, "300k": 300e3, "2M": 2e6, "1.5M": 1.5e6, "0": 0} {
		if got, err := parseRate(in); err != nil || got != want {
			t.Errorf("parseRate(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "fast", "-1k", "2G"} {
		if _, err := parseRate(in); err == nil {
			t.Errorf("parseRate(%q) accepted", in)
		}
	}
}
