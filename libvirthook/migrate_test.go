package libvirthook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/migration"
)

// fakeMig is a daemon for the migration operations: it records calls.
type fakeMig struct {
	fakeAPI
	down       bool   // VMs fails (a peer that does not answer)
	importFail string // Import of this VM fails
	calls      []string
}

func (f *fakeMig) VMs(ctx context.Context) ([]daemon.VMStatus, error) {
	if f.down {
		return nil, errors.New("connection refused")
	}
	return f.fakeAPI.VMs(ctx)
}

func (f *fakeMig) Export(_ context.Context, vm string, final bool) (json.RawMessage, *migration.Document, error) {
	f.calls = append(f.calls, fmt.Sprintf("export %s final=%v", vm, final))
	return json.RawMessage(fmt.Sprintf(`{"vm":{"name":%q}}`, vm)), nil, nil
}

func (f *fakeMig) Import(_ context.Context, req daemon.ImportRequest) (*daemon.ImportResult, error) {
	var doc struct {
		VM struct{ Name string } `json:"vm"`
	}
	json.Unmarshal(req.Document, &doc)
	f.calls = append(f.calls, fmt.Sprintf("import %s final=%v uplink=%s queues=%v tap=%s/%s vu=%s", doc.VM.Name, req.Final, req.Uplink, req.Queues, req.Tap, req.TapMode, req.VhostUserSocket))
	if doc.VM.Name == f.importFail {
		return nil, errors.New("refused by the host's policy")
	}
	return &daemon.ImportResult{}, nil
}

func (f *fakeMig) AbortImport(_ context.Context, vm string) error {
	f.calls = append(f.calls, "abort "+vm)
	return nil
}

func (f *fakeMig) Thaw(_ context.Context, vm string) error {
	f.calls = append(f.calls, "thaw "+vm)
	return nil
}

func (f *fakeMig) RemoveVM(_ context.Context, vm string) error {
	f.calls = append(f.calls, "remove "+vm)
	return nil
}

func TestMigrationOperations(t *testing.T) {
	two := domainXML(t, "db", meta(`<xh:interface mac="52:54:00:00:00:02" uplink="eth1"/>`, `<xh:interface mac="52:54:00:00:00:03" uplink="eth2" queues="3"/>`),
		ethernet("52:54:00:00:00:02", "db-tap0"), vhostUser("52:54:00:00:00:03", "/run/x/db.sock", ""))
	running := []daemon.VMStatus{
		{Name: "db-0", UUID: uuidOf("db"), MAC: "52:54:00:00:00:02"},
		{Name: "db-1", UUID: uuidOf("db"), MAC: "52:54:00:00:00:03"},
	}
	incoming := []daemon.VMStatus{
		{Name: "db-0", UUID: uuidOf("db"), MAC: "52:54:00:00:00:02", Incoming: true},
		{Name: "db-1", UUID: uuidOf("db"), MAC: "52:54:00:00:00:03", Incoming: true},
	}
	var logs []string
	logf := func(f string, a ...any) { logs = append(logs, fmt.Sprintf(f, a...)) }
	ctx := context.Background()
	run := func(local *fakeMig, peers []*fakeMig, op string) error {
		opts := Options{Uplinks: map[string]string{"eth1": "ens5"}}
		for i, p := range peers {
			opts.Peers = append(opts.Peers, Peer{Name: fmt.Sprintf("peer%d", i), API: p})
		}
		return RunWith(ctx, local, opts, op, "begin", strings.NewReader(two), logf)
	}

	// migrate begin: the source is the peer that runs the domain's VMs
	// (a peer that does not answer is skipped); this host's side from the
	// XML, the uplink mapped.
	local, down, src := &fakeMig{}, &fakeMig{down: true}, &fakeMig{fakeAPI: fakeAPI{vms: running}}
	if err := run(local, []*fakeMig{down, src}, "migrate"); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(src.calls); got != "[export db-0 final=false export db-1 final=false]" {
		t.Errorf("source: %s", got)
	}
	if got := fmt.Sprint(local.calls); got != "[import db-0 final=false uplink=ens5 queues=[] tap=db-tap0/external vu= import db-1 final=false uplink=eth2 queues=[3] tap=/ vu=/run/x/db.sock]" {
		t.Errorf("destination: %s", got)
	}
	// A refusal of the second VM removes the first from here again.
	local, src = &fakeMig{importFail: "db-1"}, &fakeMig{fakeAPI: fakeAPI{vms: running}}
	if err := run(local, []*fakeMig{src}, "migrate"); err == nil || !strings.Contains(err.Error(), "refuses VM db-1 from peer0") {
		t.Errorf("refused: %v", err)
	}
	if got := fmt.Sprint(local.calls[len(local.calls)-1]); got != "abort db-0" {
		t.Errorf("after a refusal: %v", local.calls)
	}
	// No peer runs it, or two do: refused, nothing imported.
	local = &fakeMig{}
	if err := run(local, []*fakeMig{{}, {down: true}}, "migrate"); err == nil || !strings.Contains(err.Error(), "no peer daemon runs") || !strings.Contains(err.Error(), "connection refused") || len(local.calls) != 0 {
		t.Errorf("no source: %v %v", err, local.calls)
	}
	if err := run(local, []*fakeMig{{fakeAPI: fakeAPI{vms: running}}, {fakeAPI: fakeAPI{vms: running}}}, "migrate"); err == nil || !strings.Contains(err.Error(), "both peers") || len(local.calls) != 0 {
		t.Errorf("two sources: %v %v", err, local.calls)
	}

	// prepare on the destination: incoming VMs are not added again.
	local = &fakeMig{fakeAPI: fakeAPI{vms: incoming}}
	if err := run(local, nil, "prepare"); err != nil || len(local.added) != 0 {
		t.Errorf("prepare of an incoming domain: %v, added %v", err, local.added)
	}

	// stopped on the source: the peer that has the VMs incoming gets the
	// final step; a failing one is undone on both sides.
	local, dst := &fakeMig{fakeAPI: fakeAPI{vms: running}}, &fakeMig{fakeAPI: fakeAPI{vms: incoming}, importFail: "db-1"}
	if err := run(local, []*fakeMig{{}, dst}, "stopped"); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(local.calls); got != "[export db-0 final=true remove db-0 export db-1 final=true thaw db-1]" {
		t.Errorf("source at stopped: %s", got)
	}
	if got := fmt.Sprint(dst.calls); got != "[import db-0 final=true uplink= queues=[] tap=/ vu= import db-1 final=true uplink= queues=[] tap=/ vu= abort db-1]" {
		t.Errorf("destination at the source's stopped: %s", got)
	}
	// A plain stop (no peer has the VMs incoming) moves nothing.
	local = &fakeMig{fakeAPI: fakeAPI{vms: running}}
	if err := run(local, []*fakeMig{{fakeAPI: fakeAPI{vms: running}}}, "stopped"); err != nil || len(local.calls) != 0 {
		t.Errorf("plain stop: %v %v", err, local.calls)
	}

	// release of an incoming VM (the migration failed here) aborts its
	// import; others are removed by owner.
	local = &fakeMig{fakeAPI: fakeAPI{vms: []daemon.VMStatus{incoming[0], running[1]}}}
	RunWith(ctx, local, Options{}, "release", "end", strings.NewReader(two), logf)
	if fmt.Sprint(local.calls) != "[abort db-0]" || fmt.Sprint(local.removed) != "[db-1/52:54:00:00:00:03]" {
		t.Errorf("release: calls %v, removed %v", local.calls, local.removed)
	}
}
