package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/agentproto"
)

type vm struct {
	cur, next uint64
	names     []string
}

func (v *vm) Caps(context.Context) (any, error) {
	return map[string]any{"helpers": []string{"bpf_redirect_map"}, "vm": "web"}, nil
}
func (v *vm) Status(context.Context) (any, error) {
	return map[string]any{"vm": "web", "program": map[string]any{"id": v.cur}, "big": uint64(1<<63 + 1)}, nil
}
func (v *vm) Submit(_ context.Context, r agentproto.SubmitRequest) (any, error) {
	v.names = append(v.names, r.Name)
	if !bytes.HasPrefix(r.Object, []byte("\x7fELF")) {
		return nil, &agentproto.Error{Code: agentproto.CodeRefused, Message: "not an XDP object", Detail: "[rule] detail line"}
	}
	v.next++
	v.cur = v.next
	return map[string]any{"id": v.cur, "entry": "xdp_prog"}, nil
}
func (v *vm) Replace(_ context.Context, r agentproto.ReplaceRequest) (any, error) {
	if r.Expect != v.cur {
		return nil, &agentproto.Error{Code: agentproto.CodeConflict, Message: "stale"}
	}
	v.next++
	v.cur = v.next
	return map[string]any{"id": v.cur, "entry": "xdp_prog"}, nil
}
func (v *vm) Remove(_ context.Context, r agentproto.RemoveRequest) (any, error) {
	v.cur = 0
	return nil, nil
}

func TestCommands(t *testing.T) {
	h := &vm{}
	dial := func(string) (io.ReadWriteCloser, error) {
		a, b := net.Pipe()
		go func() { agentproto.Serve(context.Background(), a, h, agentproto.ServeOptions{}); a.Close() }()
		return b, nil
	}
	dir := t.TempDir()
	good := filepath.Join(dir, "filter.o")
	os.WriteFile(good, []byte("\x7fELF..."), 0o644)
	bad := filepath.Join(dir, "junk.o")
	os.WriteFile(bad, []byte("junk"), 0o644)
	big := filepath.Join(dir, "big.o")
	os.WriteFile(big, make([]byte, agentproto.MaxObject+1), 0o644)
	empty := filepath.Join(dir, "empty.o")
	os.WriteFile(empty, nil, 0o644)
	for _, tc := range []struct {
		args     []string
		code     int
		out, err string
	}{
		{[]string{"--port", "x", "caps"}, 0, "bpf_redirect_map", ""},
		{[]string{"--port", "x", "--json", "caps"}, 0, `"vm": "web"`, ""},
		{[]string{"--port", "x", "submit", good}, 0, "program 1 (filter, entry xdp_prog)", ""},
		{[]string{"--port", "x", "submit", bad}, 1, "", "refused: not an XDP object\n[rule] detail line"},
		{[]string{"--port", "x", "submit", big}, 1, "", "up to 1048576 bytes"},
		{[]string{"--port", "x", "replace", "--expect", "7", good}, 1, "", "conflict: stale"},
		{[]string{"--port", "x", "replace", "--expect", "1", "--name", "v2", good}, 0, "program 2 (v2", ""},
		{[]string{"--port", "x", "status"}, 0, "id: 2", ""},
		{[]string{"--port", "x", "rm", "--expect", "2"}, 0, "program 2 removed", ""},
		{[]string{"--port", "x", "replace", good}, 2, "", "--expect ID is required"},
		{[]string{"--port", "x", "rm"}, 2, "", "--expect ID"},
		{[]string{"--port", "x", "frob"}, 2, "", `unknown command "frob"`},
		{[]string{}, 2, "", "name a command"},
		{[]string{"--port", "x", "submit", "--json", "--name", "j", good}, 0, "\"id\": 3", ""},
		{[]string{"--port", "x", "status", "--json"}, 0, `"big": 9223372036854775809`, ""},
		{[]string{"--port", "x", "status"}, 0, "big: 9223372036854775809\nprogram:\n  id: 3\nvm: web\n", ""},
		{[]string{"--port", "x", "submit", empty}, 1, "", "is empty"},
		{[]string{"--port", "x", "submit", filepath.Join(dir, "nope.o")}, 1, "", "no such file"},
		{[]string{"--port", "x", "submit"}, 2, "", "usage: xdp-hostd-agent"},
		{[]string{"--port", "x", "status", "extra"}, 2, "", "takes no arguments"},
		{[]string{"--bogus", "status"}, 2, "", "flag provided but not defined: -bogus"},
	} {
		var out, errb bytes.Buffer
		code := run(tc.args, &out, &errb, dial)
		if code != tc.code || !strings.Contains(out.String(), tc.out) || !strings.Contains(errb.String(), tc.err) {
			t.Errorf("%v: exit %d\nstdout: %s\nstderr: %s", tc.args, code, out.String(), errb.String())
		}
	}
	if want := []string{"filter", "junk", "j"}; strings.Join(h.names, ",") != strings.Join(want, ",") {
		t.Errorf("names sent: %q, want %q", h.names, want)
	}
}

func TestNoPort(t *testing.T) {
	dial := func(p string) (io.ReadWriteCloser, error) { return openPort(p) }
	var out, errb bytes.Buffer
	code := run([]string{"--port", filepath.Join(t.TempDir(), "vport9p9"), "caps"}, &out, &errb, dial)
	if code != 1 || !strings.Contains(errb.String(), "needs a virtserialport named org.xdp-hostd.agent.0") || !strings.Contains(errb.String(), "xdp-hostd qemu-args") {
		t.Errorf("exit %d: %s", code, errb.String())
	}
}

// A daemon that never answers: the command gives up after --timeout.
func TestTimeout(t *testing.T) {
	dial := func(string) (io.ReadWriteCloser, error) {
		a, b := net.Pipe()
		go func() { io.Copy(io.Discard, a); a.Close() }()
		return b, nil
	}
	var out, errb bytes.Buffer
	start := time.Now()
	code := run([]string{"--port", "x", "--timeout", "100ms", "status"}, &out, &errb, dial)
	if code != 1 || !strings.Contains(errb.String(), "deadline exceeded") || time.Since(start) > 5*time.Second {
		t.Errorf("exit %d after %v: %s", code, time.Since(start), errb.String())
	}
}

// Over a unix socket pair, as the daemon serves it.
func TestUnixSocket(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	srv, cli := conn(fds[0]), conn(fds[1])
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go agentproto.Serve(ctx, srv, &vm{}, agentproto.ServeOptions{})
	var out, errb bytes.Buffer
	code := run([]string{"caps"}, &out, &errb, func(p string) (io.ReadWriteCloser, error) {
		if p != "" {
			t.Errorf("default port %q", p)
		}
		return cli, nil
	})
	if code != 0 || !strings.Contains(out.String(), "vm: web") {
		t.Errorf("exit %d\nstdout: %s\nstderr: %s", code, out.String(), errb.String())
	}
}
