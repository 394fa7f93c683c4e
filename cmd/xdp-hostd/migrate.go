package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/xdp-hostd/xdp-hostd/client"
	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/migration"
)

const migrateUsage = `usage: xdp-hostd migrate [flags] VM --to DEST_SOCKET
  move a VM's registration, program and map contents to the daemon at DEST_SOCKET, beside
  QEMU's own migration (see the README, "Live migration"):
    migrate VM --to DEST           before QMP 'migrate': DEST registers the VM (dropping its frames)
                                   and checks its program and maps against DEST's policy; nothing runs
    migrate --final VM --to DEST   once the source VM has stopped: freeze the program here, carry its
                                   maps, start it on DEST, remove the VM here (unless --keep-source);
                                   if DEST fails, the VM's program runs here again and DEST keeps nothing
    migrate --abort VM --to DEST   the migration failed: remove what DEST set up, thaw the VM here
  migrate export [--final] VM      print the VM's migration document (JSON) on stdout
  migrate import [--final] [--to DEST] FILE|-
                                   import a document into DEST (default: --socket)
flags (DEST's side of the VM, default the source's uplink and queues, the default tap, no sockets):
  --socket PATH (the source daemon, default ` + daemon.DefaultSocket + `)
  --uplink IF --queues 1,2 --tap NAME --vhost-user-socket PATH --agent-socket PATH
  --keep-source --json`

type migrateFlags struct {
	socket, to                               string
	final, abort, keepSource, asJSON         bool
	uplink, queues, tap, vhostUser, agentSck string
}

func runMigrate(ctx context.Context, e *env, args []string) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Fprintln(e.stderr, migrateUsage)
		return flag.ErrHelp
	}
	sub := "migrate"
	if len(args) > 0 && (args[0] == "export" || args[0] == "import") {
		sub, args = args[0], args[1:]
	}
	fs := newFlags(e, "migrate", "migrate (see xdp-hostd migrate -h)")
	fs.Usage = func() { fmt.Fprintln(e.stderr, migrateUsage) }
	var f migrateFlags
	fs.StringVar(&f.socket, "socket", daemon.DefaultSocket, "the source daemon's API socket")
	fs.StringVar(&f.to, "to", "", "the destination daemon's API socket")
	fs.BoolVar(&f.final, "final", false, "the final step: freeze the program, carry its maps, start it on the destination")
	fs.BoolVar(&f.abort, "abort", false, "undo a migration: remove the VM from the destination, thaw it here")
	fs.BoolVar(&f.keepSource, "keep-source", false, "after --final, keep the (frozen) VM registered here")
	fs.BoolVar(&f.asJSON, "json", false, "print JSON")
	fs.StringVar(&f.uplink, "uplink", "", "the destination's uplink for the VM")
	fs.StringVar(&f.queues, "queues", "", "the destination's dedicated queues, comma-separated")
	fs.StringVar(&f.tap, "tap", "", "the destination's tap for the VM")
	fs.StringVar(&f.vhostUser, "vhost-user-socket", "", "where the destination serves the VM's vhost-user device")
	fs.StringVar(&f.agentSck, "agent-socket", "", "where the destination serves the VM's guest agent channel")
	// Flags may come after the VM's name.
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return flagErr(err)
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: name one VM (or, for import, one file); see xdp-hostd migrate -h", errUsage)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	src := client.New(f.socket)
	switch sub {
	case "export":
		raw, _, err := src.Export(ctx, pos[0], f.final)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(e.stdout, "%s\n", raw)
		return err
	case "import":
		var b []byte
		var err error
		if pos[0] == "-" {
			b, err = io.ReadAll(io.LimitReader(e.stdin, migration.MaxSize+1))
		} else {
			b, err = os.ReadFile(pos[0])
		}
		if err != nil {
			return fmt.Errorf("read the document: %w", err)
		}
		if _, err := migration.Decode(b); err != nil {
			return err
		}
		dst := src
		if f.to != "" {
			dst = client.New(f.to)
		}
		req, err := f.request(b)
		if err != nil {
			return err
		}
		res, err := dst.Import(ctx, req)
		if err != nil {
			return err
		}
		return printImport(e.stdout, f.asJSON, res)
	}
	if f.to == "" {
		return fmt.Errorf("%w: --to: the destination daemon's API socket is required", errUsage)
	}
	if f.final && f.abort {
		return fmt.Errorf("%w: --final and --abort exclude each other", errUsage)
	}
	dst := client.New(f.to)
	vm := pos[0]
	switch {
	case f.abort:
		return migrateAbort(ctx, e, src, dst, vm)
	case f.final:
		return migrateFinal(ctx, e, src, dst, vm, f)
	}
	raw, doc, err := src.Export(ctx, vm, false)
	if err != nil {
		return fmt.Errorf("export VM %s: %w", vm, err)
	}
	req, err := f.request(raw)
	if err != nil {
		return err
	}
	res, err := dst.Import(ctx, req)
	if err != nil {
		return fmt.Errorf("the destination refused VM %s (it keeps nothing of it; the VM runs on here unchanged): %w", vm, err)
	}
	if f.asJSON {
		return printImport(e.stdout, true, res)
	}
	what := "registration"
	if doc.Program != nil {
		what = fmt.Sprintf("program %d (%d maps, %d entries checked)", doc.Program.ID, res.Maps, res.Entries)
	}
	fmt.Fprintf(e.stdout, "VM %s prepared on %s: %s; it drops its frames there until the final step.\nNow migrate QEMU (QMP migrate); once the source VM has stopped run:\n  xdp-hostd migrate --final %s --to %s --socket %s\n(or, if QEMU's migration fails: xdp-hostd migrate --abort %s --to %s --socket %s)\n",
		vm, f.to, what, vm, f.to, f.socket, vm, f.to, f.socket)
	return nil
}

func (f *migrateFlags) request(doc []byte) (daemon.ImportRequest, error) {
	req := daemon.ImportRequest{Document: doc, Final: f.final, Uplink: f.uplink, Tap: f.tap, VhostUserSocket: f.vhostUser, AgentSocket: f.agentSck}
	for _, q := range strings.Split(f.queues, ",") {
		if q = strings.TrimSpace(q); q == "" {
			continue
		}
		n, err := strconv.Atoi(q)
		if err != nil {
			return req, fmt.Errorf("%w: --queues: %q is not a queue number", errUsage, q)
		}
		req.Queues = append(req.Queues, n)
	}
	return req, nil
}

// migrateFinal freezes the VM here, carries its final state to the
// destination and starts it there; on failure it undoes both sides.
func migrateFinal(ctx context.Context, e *env, src, dst *client.Client, vm string, f migrateFlags) error {
	raw, doc, err := src.Export(ctx, vm, true)
	if err != nil {
		return fmt.Errorf("final export of VM %s (its program runs on here): %w", vm, err)
	}
	req, err := f.request(raw)
	if err == nil {
		req.Final = true
		var res *daemon.ImportResult
		if res, err = dst.Import(ctx, req); err == nil {
			if !f.keepSource {
				if rerr := src.RemoveVM(ctx, vm); rerr != nil {
					fmt.Fprintf(e.stderr, "xdp-hostd migrate: VM %s runs on %s, but removing it here failed (it stays frozen, dropping its frames): %v\n", vm, f.to, rerr)
				}
			}
			if f.asJSON {
				return printImport(e.stdout, true, res)
			}
			if res.Program != nil {
				fmt.Fprintf(e.stdout, "VM %s runs on %s with program %d (it was program %d here; %d maps, %d entries carried)\n", vm, f.to, res.Program.ID, doc.Program.ID, res.Maps, res.Entries)
			} else {
				fmt.Fprintf(e.stdout, "VM %s runs on %s with the built-in program\n", vm, f.to)
			}
			return nil
		}
	}
	// Undo: the destination keeps nothing, the program runs here again.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	var undo []error
	if aerr := dst.AbortImport(ctx, vm); aerr != nil {
		undo = append(undo, fmt.Errorf("remove it from the destination: %w", aerr))
	}
	if terr := src.Thaw(ctx, vm); terr != nil {
		undo = append(undo, fmt.Errorf("thaw it here: %w", terr))
	}
	if len(undo) > 0 {
		return fmt.Errorf("the final import of VM %s failed (%w), and undoing it failed too: %w", vm, err, errors.Join(undo...))
	}
	return fmt.Errorf("the final import of VM %s failed; its program runs here again and the destination keeps nothing (resume the source QEMU with QMP 'cont'): %w", vm, err)
}

func migrateAbort(ctx context.Context, e *env, src, dst *client.Client, vm string) error {
	var errs []error
	if err := dst.AbortImport(ctx, vm); err != nil {
		errs = append(errs, fmt.Errorf("destination: %w", err))
	}
	if err := src.Thaw(ctx, vm); err != nil {
		var ce *client.Error
		if !errors.As(err, &ce) || ce.Status != 404 {
			errs = append(errs, fmt.Errorf("source: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("abort the migration of VM %s: %w", vm, err)
	}
	fmt.Fprintf(e.stdout, "migration of VM %s aborted: the destination keeps nothing of it; it runs here with its program\n", vm)
	return nil
}

func printImport(w io.Writer, asJSON bool, res *daemon.ImportResult) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	state := "running"
	if res.Incoming {
		state = "incoming (drops its frames until the final import)"
	}
	fmt.Fprintf(w, "VM %s: %s; %d maps, %d entries\n", res.VM.Name, state, res.Maps, res.Entries)
	if res.Program != nil {
		fmt.Fprintf(w, "program %d (sha256 %s)\n", res.Program.ID, res.Program.SHA256)
	}
	return nil
}
