// Command xdp-hostd-agent runs inside a VM and manages that VM's XDP program
// on the host, over the VM's virtio-serial port org.xdp-hostd.agent.0 (see
// package agentproto). Build it static: CGO_ENABLED=0 go build.
//
//	xdp-hostd-agent caps                                 what programs may use
//	xdp-hostd-agent status                               this VM's program and counters
//	xdp-hostd-agent submit [--name N] [--entry F] FILE   load a program
//	xdp-hostd-agent replace --expect ID [...] FILE       swap the program ID for FILE
//	xdp-hostd-agent rm --expect ID                       back to the built-in program
//
// Global options (before or after the command): --port PATH (default: the
// udev link /dev/virtio-ports/org.xdp-hostd.agent.0, else the /dev/vportNpM
// that /sys/class/virtio-ports names so), --timeout D (default 30s, 0: no
// limit), --json (print the daemon's answer as indented JSON). The program
// name defaults to the file's base name without its extension; objects
// over 1 MiB are refused before anything is sent.
//
// Exit status: 0 done; 1 the daemon refused (printed as
// "xdp-hostd-agent: CODE: MESSAGE", then the detail) or the channel failed;
// 2 usage.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/agentproto"
)

const usage = `usage: xdp-hostd-agent [--port PATH] [--timeout 30s] [--json] COMMAND
  caps                                   what a program on this VM may use
  status                                 this VM's program and its counters
  submit [--name NAME] [--entry FUNC] FILE   load FILE (an XDP object) on this VM
  replace --expect ID [--name NAME] [--entry FUNC] FILE
                                         swap program ID for FILE
  rm --expect ID                         remove program ID (back to the built-in one)`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, openPort))
}

// dialer opens the channel to the daemon: the port at path, or if path is
// empty the agent's port found by its name.
type dialer func(path string) (io.ReadWriteCloser, error)

func run(args []string, stdout, stderr io.Writer, dial dialer) int {
	global := flag.NewFlagSet("xdp-hostd-agent", flag.ContinueOnError)
	global.SetOutput(io.Discard)
	port := global.String("port", "", "the virtio-serial port (default: the one named "+agentproto.PortName+")")
	timeout := global.Duration("timeout", 30*time.Second, "how long to wait for the daemon (0: no limit)")
	asJSON := global.Bool("json", false, "print the daemon's answer as JSON")
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "xdp-hostd-agent: "+format+"\n%s\n", append(a, usage)...)
		return 2
	}
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stdout, usage)
			return 0
		}
		return usageErr("%v", err)
	}
	if global.NArg() == 0 {
		return usageErr("name a command")
	}
	cmd, rest := global.Arg(0), global.Args()[1:]
	sub := flag.NewFlagSet(cmd, flag.ContinueOnError)
	sub.SetOutput(io.Discard)
	// The global options may also follow the command.
	global.VisitAll(func(f *flag.Flag) { sub.Var(f.Value, f.Name, f.Usage) })
	name := sub.String("name", "", "a name for the program (default: the file's)")
	entry := sub.String("entry", "", "the XDP function (default: the only one)")
	expect := sub.Uint64("expect", 0, "the ID of the program the VM runs now")
	if err := sub.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stdout, usage)
			return 0
		}
		return usageErr("%s: %v", cmd, err)
	}
	var obj []byte
	switch cmd {
	case "caps", "status":
		if sub.NArg() != 0 {
			return usageErr("%s takes no arguments", cmd)
		}
	case "submit", "replace":
		if sub.NArg() != 1 {
			return usageErr("%s: name one object file", cmd)
		}
		if cmd == "replace" && *expect == 0 {
			return usageErr("replace: --expect ID is required (the program the VM runs; see status)")
		}
		path := sub.Arg(0)
		fi, err := os.Stat(path)
		if err != nil {
			fmt.Fprintf(stderr, "xdp-hostd-agent: %v\n", err)
			return 1
		}
		if fi.Mode().IsRegular() && fi.Size() > agentproto.MaxObject {
			fmt.Fprintf(stderr, "xdp-hostd-agent: %s has %d bytes; the host takes objects up to %d bytes (1 MiB)\n", path, fi.Size(), agentproto.MaxObject)
			return 1
		}
		if obj, err = readObject(path); err != nil {
			fmt.Fprintf(stderr, "xdp-hostd-agent: %v\n", err)
			return 1
		}
		if *name == "" {
			*name = strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
		}
	case "rm":
		if sub.NArg() != 0 || *expect == 0 {
			return usageErr("rm: give --expect ID and nothing else")
		}
	default:
		return usageErr("unknown command %q", cmd)
	}

	ch, err := dial(*port)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) && errors.Is(err, fs.ErrNotExist) {
			fmt.Fprintf(stderr, "xdp-hostd-agent: %s does not exist: %s\n", pe.Path, noPortHint)
			return 1
		}
		fmt.Fprintf(stderr, "xdp-hostd-agent: %v\n", err)
		return 1
	}
	defer ch.Close()
	ctx := context.Background()
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	c := agentproto.NewClient(ch)
	var res json.RawMessage
	switch cmd {
	case "caps":
		res, err = c.Caps(ctx)
	case "status":
		res, err = c.Status(ctx)
	case "submit":
		res, err = c.Submit(ctx, agentproto.SubmitRequest{Name: *name, Entry: *entry, Object: obj})
	case "replace":
		res, err = c.Replace(ctx, agentproto.ReplaceRequest{Expect: *expect, Name: *name, Entry: *entry, Object: obj})
	case "rm":
		err = c.Remove(ctx, agentproto.RemoveRequest{Expect: *expect})
	}
	var e *agentproto.Error
	if errors.As(err, &e) {
		fmt.Fprintf(stderr, "xdp-hostd-agent: %s: %s\n", e.Code, e.Message)
		if e.Detail != "" {
			fmt.Fprintln(stderr, strings.TrimRight(e.Detail, "\n"))
		}
		return 1
	}
	if err != nil {
		fmt.Fprintf(stderr, "xdp-hostd-agent: %v (is xdp-hostd serving this VM's agent channel?)\n", err)
		return 1
	}
	if *asJSON {
		// Indent the daemon's bytes as they are: no reordering, no
		// rounding of large numbers.
		var b bytes.Buffer
		if len(bytes.TrimSpace(res)) == 0 {
			res = json.RawMessage("null")
		}
		if err := json.Indent(&b, res, "", "  "); err != nil {
			fmt.Fprintf(stderr, "xdp-hostd-agent: the daemon's answer is not JSON: %v\n", err)
			return 1
		}
		fmt.Fprintln(stdout, b.String())
		return 0
	}
	switch cmd {
	case "submit", "replace":
		var rec struct {
			ID    uint64 `json:"id"`
			Entry string `json:"entry"`
		}
		json.Unmarshal(res, &rec)
		what := *name
		if rec.Entry != "" {
			what += ", entry " + rec.Entry
		}
		if rec.ID == 0 {
			fmt.Fprintf(stdout, "program (%s) loaded on this VM\n", what)
		} else {
			fmt.Fprintf(stdout, "program %d (%s) loaded on this VM\n", rec.ID, what)
		}
		if cmd == "replace" {
			fmt.Fprintf(stdout, "it replaced program %d\n", *expect)
		}
	case "rm":
		fmt.Fprintf(stdout, "program %d removed; this VM runs the built-in program\n", *expect)
	default:
		dec := json.NewDecoder(bytes.NewReader(res))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err != nil {
			fmt.Fprintf(stderr, "xdp-hostd-agent: the daemon's answer is not JSON: %v\n", err)
			return 1
		}
		render(stdout, "", v)
	}
	return 0
}

// render prints JSON as indented "key: value" lines.
func render(w io.Writer, indent string, v any) {
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			switch c := x[k].(type) {
			case map[string]any, []any:
				if isEmpty(c) {
					fmt.Fprintf(w, "%s%s: -\n", indent, k)
					continue
				}
				fmt.Fprintf(w, "%s%s:\n", indent, k)
				render(w, indent+"  ", c)
			default:
				fmt.Fprintf(w, "%s%s: %v\n", indent, k, scalar(c))
			}
		}
	case []any:
		simple := true
		for _, e := range x {
			switch e.(type) {
			case map[string]any, []any:
				simple = false
			}
		}
		if simple {
			parts := make([]string, len(x))
			for i, e := range x {
				parts[i] = fmt.Sprint(scalar(e))
			}
			fmt.Fprintf(w, "%s%s\n", indent, strings.Join(parts, ", "))
			return
		}
		for i, e := range x {
			fmt.Fprintf(w, "%s- [%d]\n", indent, i)
			render(w, indent+"  ", e)
		}
	default:
		fmt.Fprintf(w, "%s%v\n", indent, scalar(v))
	}
}

func isEmpty(v any) bool {
	switch x := v.(type) {
	case map[string]any:
		return len(x) == 0
	case []any:
		return len(x) == 0
	}
	return false
}

func scalar(v any) any {
	if v == nil {
		return "-"
	}
	return v
}

// findPort finds the agent's virtio-serial port: the udev link if there is
// one, else the /dev/vportNpM that sysfs names (guests without udev).
func findPort() (string, error) {
	link := "/dev/virtio-ports/" + agentproto.PortName
	if _, err := os.Stat(link); err == nil {
		return link, nil
	}
	names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil || strings.TrimSpace(string(b)) != agentproto.PortName {
			continue
		}
		dev := "/dev/" + filepath.Base(filepath.Dir(n))
		if _, err := os.Stat(dev); err == nil {
			return dev, nil
		}
		// No devtmpfs node: make one from sysfs's major:minor.
		var maj, min uint32
		if b, err := os.ReadFile(filepath.Join(filepath.Dir(n), "dev")); err == nil {
			if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &maj, &min); err == nil {
				if err := unix.Mknod(dev, unix.S_IFCHR|0o600, int(unix.Mkdev(maj, min))); err == nil {
					return dev, nil
				}
			}
		}
		return "", fmt.Errorf("the port %s is %s, but %s cannot be opened", agentproto.PortName, filepath.Base(filepath.Dir(n)), dev)
	}
	return "", fmt.Errorf("this VM has no virtio-serial port named %s: %s", agentproto.PortName, noPortHint)
}

// noPortHint says what a VM without the agent's port is missing.
var noPortHint = "the VM needs a virtserialport named " + agentproto.PortName +
	" connected to xdp-hostd's agent socket (see `xdp-hostd qemu-args`; with libvirt, a <channel type='unix'> with <target type='virtio' name='" +
	agentproto.PortName + "'/>)"

// readObject reads a program object, refusing one over MaxObject without
// reading more than one byte past it.
func readObject(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, agentproto.MaxObject+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > agentproto.MaxObject {
		return nil, fmt.Errorf("%s has more than %d bytes; the host takes objects up to %d bytes (1 MiB)", path, agentproto.MaxObject, agentproto.MaxObject)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("%s is empty; give the compiled XDP object (clang -target bpf -c)", path)
	}
	return b, nil
}

// openPort opens a virtio-serial port (the agent's if path is empty)
// non-blocking, so that the runtime poller serves it and deadlines work.
func openPort(path string) (io.ReadWriteCloser, error) {
	if path == "" {
		var err error
		if path, err = findPort(); err != nil {
			return nil, err
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err // a *fs.PathError naming the port
	}
	return f, nil
}
