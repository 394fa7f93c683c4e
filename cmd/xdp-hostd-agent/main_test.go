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

	"github.com/xdp-hostd/xdp-hostd/agentproto"
)

type vm struct{ cur, next uint64 }

func (v *vm) Caps(context.Context) (any, error) {
	return map[string]any{"helpers": []string{"bpf_redirect_map"}, "vm": "web"}, nil
}
func (v *vm) Status(context.Context) (any, error) {
	return map[string]any{"vm": "web", "program": map[string]any{"id": v.cur}}, nil
}
func (v *vm) Submit(_ context.Context, r agentproto.SubmitRequest) (any, error) {
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
	} {
		var out, errb bytes.Buffer
		code := run(tc.args, &out, &errb, dial)
		if code != tc.code || !strings.Contains(out.String(), tc.out) || !strings.Contains(errb.String(), tc.err) {
			t.Errorf("%v: exit %d\nstdout: %s\nstderr: %s", tc.args, code, out.String(), errb.String())
		}
	}
}
