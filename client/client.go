// Package client talks to a running xdp-hostd over its unix-socket API. The
// CLI, the libvirt hook and the guest agent's host side share it.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/xdp-hostd/xdp-hostd/daemon"
	"github.com/xdp-hostd/xdp-hostd/guestprog"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/migration"
)

// Client is a connection to the daemon's API.
type Client struct {
	socket string
	http   *http.Client
}

// New returns a client for the daemon at socket ("" for daemon.DefaultSocket).
func New(socket string) *Client {
	if socket == "" {
		socket = daemon.DefaultSocket
	}
	return &Client{socket: socket, http: &http.Client{
		Timeout: 60 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
	}}
}

// Error is an error the daemon answered with.
type Error struct {
	Status int
	daemon.APIError
}

func (e *Error) Error() string {
	var b bytes.Buffer
	b.WriteString(e.APIError.Error)
	if len(e.VerifierLog) > 0 && !bytes.Contains([]byte(e.APIError.Error), []byte(e.VerifierLog[len(e.VerifierLog)-1])) {
		b.WriteString("\nverifier log:")
		for _, l := range e.VerifierLog {
			b.WriteString("\n  " + l)
		}
	}
	return b.String()
}

// Conflict reports whether the daemon refused because the expected program
// was not current (or the VM already has one).
func (e *Error) Conflict() bool { return e.Status == http.StatusConflict }

// Media types of request bodies.
const (
	jsonBody   = "application/json"
	objectBody = "application/octet-stream"
)

func (c *Client) do(ctx context.Context, method, path string, query url.Values, body []byte, out any) error {
	return c.doType(ctx, method, path, query, jsonBody, body, out)
}

// doType sends body (if not nil) as media type ctype.
func (c *Client) doType(ctx context.Context, method, path string, query url.Values, ctype string, body []byte, out any) error {
	u := "http://xdp-hostd/" + daemon.APIVersion + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) {
			return fmt.Errorf("cannot reach xdp-hostd at %s (is 'xdp-hostd run' running, and may you use its socket?): %w", c.socket, op.Err)
		}
		return fmt.Errorf("xdp-hostd at %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, migration.MaxSize+(1<<20)))
	if err != nil {
		return fmt.Errorf("read the daemon's answer: %w", err)
	}
	if resp.StatusCode >= 300 {
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(b, &e.APIError) != nil || e.APIError.Error == "" {
			e.APIError.Error = fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(b))
		}
		return e
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decode the daemon's answer: %w", err)
		}
	}
	return nil
}

// Status returns the daemon's uplinks and VMs.
func (c *Client) Status(ctx context.Context) (*daemon.Status, error) {
	var s daemon.Status
	return &s, c.do(ctx, http.MethodGet, "/status", nil, nil, &s)
}

// Caps returns the capability document, for a VM if vm is set.
func (c *Client) Caps(ctx context.Context, vm string) (*guestprog.Capabilities, error) {
	q := url.Values{}
	if vm != "" {
		q.Set("vm", vm)
	}
	var caps guestprog.Capabilities
	return &caps, c.do(ctx, http.MethodGet, "/caps", q, nil, &caps)
}

// Programs lists the current guest programs.
func (c *Client) Programs(ctx context.Context) ([]daemon.ProgramRecord, error) {
	var out []daemon.ProgramRecord
	return out, c.do(ctx, http.MethodGet, "/programs", nil, nil, &out)
}

// Program shows one program.
func (c *Client) Program(ctx context.Context, id uint64) (*daemon.ProgramRecord, error) {
	var rec daemon.ProgramRecord
	return &rec, c.do(ctx, http.MethodGet, "/programs/"+strconv.FormatUint(id, 10), nil, nil, &rec)
}

func entryQuery(entry string, expect uint64) url.Values {
	q := url.Values{}
	if entry != "" {
		q.Set("entry", entry)
	}
	if expect != 0 {
		q.Set("expect", strconv.FormatUint(expect, 10))
	}
	return q
}

// Load installs a guest program on a VM running the built-in one.
func (c *Client) Load(ctx context.Context, vm string, obj []byte, entry string) (*daemon.ProgramRecord, error) {
	var rec daemon.ProgramRecord
	return &rec, c.doType(ctx, http.MethodPost, "/vms/"+url.PathEscape(vm)+"/program", entryQuery(entry, 0), objectBody, obj, &rec)
}

// Replace swaps the VM's program if expect is the current one's ID.
func (c *Client) Replace(ctx context.Context, vm string, expect uint64, obj []byte, entry string) (*daemon.ProgramRecord, error) {
	var rec daemon.ProgramRecord
	return &rec, c.doType(ctx, http.MethodPut, "/vms/"+url.PathEscape(vm)+"/program", entryQuery(entry, expect), objectBody, obj, &rec)
}

// Remove puts the built-in program back if expect is the current one's ID.
func (c *Client) Remove(ctx context.Context, vm string, expect uint64) error {
	return c.do(ctx, http.MethodDelete, "/vms/"+url.PathEscape(vm)+"/program", entryQuery("", expect), nil, nil)
}

// VMs lists the daemon's VMs.
func (c *Client) VMs(ctx context.Context) ([]daemon.VMStatus, error) {
	var out []daemon.VMStatus
	return out, c.do(ctx, http.MethodGet, "/vms", nil, nil, &out)
}

// VM shows one VM.
func (c *Client) VM(ctx context.Context, name string) (*daemon.VMStatus, error) {
	var out daemon.VMStatus
	return &out, c.do(ctx, http.MethodGet, "/vms/"+url.PathEscape(name), nil, nil, &out)
}

// AddVM adds a VM to the running daemon.
func (c *Client) AddVM(ctx context.Context, uplink string, vm daemon.VMConfig) (*daemon.VMStatus, error) {
	body, err := json.Marshal(daemon.AddVMRequest{Uplink: uplink, VM: vm})
	if err != nil {
		return nil, err
	}
	var out daemon.VMStatus
	return &out, c.do(ctx, http.MethodPost, "/vms", nil, body, &out)
}

// AddVMs adds several VMs as one: all of them or, if one fails or ctx ends
// while the daemon adds them, none.
func (c *Client) AddVMs(ctx context.Context, vms []daemon.AddVMRequest) ([]daemon.VMStatus, error) {
	body, err := json.Marshal(daemon.AddVMsRequest{VMs: vms})
	if err != nil {
		return nil, err
	}
	var out []daemon.VMStatus
	return out, c.do(ctx, http.MethodPost, "/vm-batch", nil, body, &out)
}

// RemoveVM removes a VM (and its guest program, ports and vhost-user port).
func (c *Client) RemoveVM(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/vms/"+url.PathEscape(name), nil, nil, nil)
}

// RemoveOwnedVM removes a VM only if owner registered it (the same
// domain UUID and MAC); another's VM of that name is left alone (an error
// wrapping a 409 answer).
func (c *Client) RemoveOwnedVM(ctx context.Context, name string, owner daemon.VMOwner) error {
	return c.do(ctx, http.MethodDelete, "/vms/"+url.PathEscape(name), url.Values{"uuid": {owner.UUID}, "mac": {owner.MAC}}, nil, nil)
}

// AttachTap gives a VM whose tap someone else creates ("tap_mode":
// "external") that tap, now that it exists; owner, if not nil, must be
// who registered the VM.
func (c *Client) AttachTap(ctx context.Context, vm, tap string, owner *daemon.VMOwner) (*daemon.VMStatus, error) {
	body, err := json.Marshal(daemon.AttachTapRequest{Tap: tap, Owner: owner})
	if err != nil {
		return nil, err
	}
	var out daemon.VMStatus
	return &out, c.do(ctx, http.MethodPost, "/vms/"+url.PathEscape(vm)+"/tap", nil, body, &out)
}

// Ports lists a VM's port table.
func (c *Client) Ports(ctx context.Context, vm string) ([]hostnet.Port, error) {
	var out []hostnet.Port
	return out, c.do(ctx, http.MethodGet, "/vms/"+url.PathEscape(vm)+"/ports", nil, nil, &out)
}

// AddPort adds ifname to a VM's port table as port n.
func (c *Client) AddPort(ctx context.Context, vm string, n uint32, ifname string) ([]hostnet.Port, error) {
	return c.AddPortRequest(ctx, vm, daemon.AddPortRequest{Port: n, Ifname: ifname})
}

// AddPortRequest adds a port as req says (CrossVM: a port into another
// VM's tap).
func (c *Client) AddPortRequest(ctx context.Context, vm string, req daemon.AddPortRequest) ([]hostnet.Port, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var out []hostnet.Port
	return out, c.do(ctx, http.MethodPost, "/vms/"+url.PathEscape(vm)+"/ports", nil, body, &out)
}

// RemovePort removes port n from a VM's port table.
func (c *Client) RemovePort(ctx context.Context, vm string, n uint32) error {
	return c.do(ctx, http.MethodDelete, "/vms/"+url.PathEscape(vm)+"/ports/"+strconv.FormatUint(uint64(n), 10), nil, nil, nil)
}

// Export returns a VM's migration document as the daemon wrote it. final
// freezes the VM's program first (see daemon.Daemon.Export).
func (c *Client) Export(ctx context.Context, vm string, final bool) (json.RawMessage, *migration.Document, error) {
	q := url.Values{}
	if final {
		q.Set("final", "true")
	}
	var raw json.RawMessage
	if err := c.do(ctx, http.MethodPost, "/vms/"+url.PathEscape(vm)+"/export", q, nil, &raw); err != nil {
		return nil, nil, err
	}
	doc, err := migration.Decode(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("the daemon's export: %w", err)
	}
	return raw, doc, nil
}

// Thaw puts a VM's program back after a final export.
func (c *Client) Thaw(ctx context.Context, vm string) error {
	return c.do(ctx, http.MethodPost, "/vms/"+url.PathEscape(vm)+"/thaw", nil, nil, nil)
}

// Import sets a VM up from a migration document (prepare, or final).
func (c *Client) Import(ctx context.Context, req daemon.ImportRequest) (*daemon.ImportResult, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var res daemon.ImportResult
	return &res, c.do(ctx, http.MethodPost, "/migrations", nil, b, &res)
}

// AbortImport removes a VM an unfinished import registered.
func (c *Client) AbortImport(ctx context.Context, vm string) error {
	return c.do(ctx, http.MethodDelete, "/migrations/"+url.PathEscape(vm), nil, nil, nil)
}
