package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/xdp-hostd/xdp-hostd/guestprog"
	"github.com/xdp-hostd/xdp-hostd/hostnet"
	"github.com/xdp-hostd/xdp-hostd/migration"
	"github.com/xdp-hostd/xdp-hostd/vmport"
)

// DefaultSocket is where the daemon serves its API.
const DefaultSocket = "/run/xdp-hostd/xdp-hostd.sock"

// APIVersion is the path prefix of the API.
const APIVersion = "v1"

// APIError is the body of every error response.
type APIError struct {
	Error       string                `json:"error"`
	Violations  []guestprog.Violation `json:"violations,omitempty"`
	VerifierLog []string              `json:"verifier_log,omitempty"`
}

// Status is GET /v1/status.
type Status struct {
	Uplinks []UplinkStatus `json:"uplinks"`
	NextID  uint64         `json:"next_program_id"`
}

// UplinkStatus is one uplink in Status.
type UplinkStatus struct {
	Inventory hostnet.Uplink        `json:"inventory"`
	XDPMode   string                `json:"xdp_mode"`
	Stats     hostnet.DispatchStats `json:"dispatch"`
	VMs       []VMStatus            `json:"vms"`
}

// VMStatus is one VM in Status.
type VMStatus struct {
	Name   string `json:"name"`
	UUID   string `json:"uuid,omitempty"`
	Uplink string `json:"uplink"`
	// Slot is the VM's index in the dispatcher's maps (vm_progs).
	Slot     int    `json:"slot"`
	MAC      string `json:"mac"`
	Queues   []int  `json:"queues"`
	Delivery string `json:"delivery"`
	Tap      string `json:"tap,omitempty"`
	// VhostUserSocket is where the VM's vhost-user device is served.
	VhostUserSocket string `json:"vhost_user_socket,omitempty"`
	// FrontEndConnected says whether a front-end (the VM's QEMU, or DPDK)
	// is connected to VhostUserSocket now; a socket serves one at a time.
	FrontEndConnected bool `json:"front_end_connected,omitempty"`
	// NoFrontEndSeconds is how long the VM has had no front-end (since
	// its socket was served, or its last front-end left); 0 while one is
	// connected.
	NoFrontEndSeconds float64 `json:"no_front_end_seconds,omitempty"`
	// TapMode is the tap_mode the VM was added with; TapWaiting says that
	// its tap, which libvirt or QEMU creates ("external"), has not been
	// attached yet: frames to the VM are not delivered.
	TapMode    string `json:"tap_mode,omitempty"`
	TapWaiting bool   `json:"tap_waiting,omitempty"`
	// VhostQueueBreaks counts the times one of the VM's virtqueues broke
	// (a bad ring, or guest memory that faulted: the connection was closed).
	VhostQueueBreaks uint64 `json:"vhost_queue_breaks,omitempty"`
	// ZeroCopy is a vhost-user VM's delivery mode (copy or zerocopy), per
	// queue pair whether zero-copy is on now, why it fell back to copy, and
	// the zero-copy counters.
	ZeroCopy *vmport.ZeroCopyStatus `json:"zero_copy,omitempty"`
	// AgentSocket is where the VM's guest agent channel is served.
	AgentSocket string `json:"agent_socket,omitempty"`
	Program     uint64 `json:"program_id"` // 0: the built-in program
	// ProgramProblem says why the VM does not run its program as loaded
	// (see ProgramRecord.Problem): kept running from the pins, or failed
	// closed.
	ProgramProblem string           `json:"program_problem,omitempty"`
	Ports          []hostnet.Port   `json:"ports"`
	Verdicts       hostnet.Verdicts `json:"verdicts"`
	TX             hostnet.TXStats  `json:"tx"`
	// Warnings name the devices the VM's frames are redirected into (its
	// uplink, its ports) that drop them: a veth whose peer has neither an
	// XDP program nor GRO on. Checked when the VM or a port is added, and
	// again while a warning stands.
	Warnings []string `json:"warnings,omitempty"`
	// Cost is the run-time cost of the VM's program per packet.
	Cost ProgramCost `json:"program_cost"`
	// Frozen: a final export froze the VM's program for a migration (it
	// drops the VM's frames); Incoming: the VM is arriving by migration and
	// waits for its final import (it drops its frames until then).
	Frozen   bool `json:"frozen,omitempty"`
	Incoming bool `json:"incoming,omitempty"`
}

// API serves the daemon's local API on a unix socket.
type API struct {
	srv  *http.Server
	ln   net.Listener
	path string
}

// Limits of the API's HTTP server: a client that stalls, or holds a
// connection it does not use, loses it. Variables so that tests can shorten
// them.
var (
	apiReadHeaderTimeout = 10 * time.Second
	// apiReadTimeout bounds reading a whole request, body included (a
	// program object is at most MaxObjectSize).
	apiReadTimeout  = 30 * time.Second
	apiWriteTimeout = 60 * time.Second
	apiIdleTimeout  = 60 * time.Second
)

const (
	apiMaxHeaderBytes = 64 << 10
	// apiMaxJSONBody is the largest JSON request body.
	apiMaxJSONBody = 1 << 20
)

// ServeAPI listens on the unix socket at path (mode 0660, group if given).
func ServeAPI(d *Daemon, path, group string) (*API, error) {
	a, err := ListenAPI(path, group)
	if err != nil {
		return nil, err
	}
	a.Serve(d)
	return a, nil
}

// ListenAPI takes the API's unix socket at path (mode 0660, group if given)
// without serving it yet: Run takes it before it touches any dataplane, so
// that a socket in use stops the daemon before anything changed. Clients
// that connect wait until Serve.
func ListenAPI(path, group string) (_ *API, err error) {
	if path == "" {
		path = DefaultSocket
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("API socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		// A socket nobody answers on is a leftover; a live one is another daemon.
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%w: another xdp-hostd serves %s: stop it first, or give this one another --socket", hostnet.ErrBusy, path)
		}
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			ln.Close() // removes the socket
		}
	}()
	if err := os.Chmod(path, 0o660); err != nil {
		return nil, fmt.Errorf("API socket mode: %w", err)
	}
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			return nil, fmt.Errorf("API socket group %q: %w", group, err)
		}
		gid, _ := strconv.Atoi(g.Gid)
		if err := os.Chown(path, -1, gid); err != nil {
			return nil, fmt.Errorf("API socket group %q: %w", group, err)
		}
	}
	return &API{ln: ln, path: path}, nil
}

// Serve starts answering on the socket ListenAPI took.
func (a *API) Serve(d *Daemon) {
	a.srv = &http.Server{Handler: newHandler(d),
		ReadHeaderTimeout: apiReadHeaderTimeout, ReadTimeout: apiReadTimeout,
		WriteTimeout: apiWriteTimeout, IdleTimeout: apiIdleTimeout, MaxHeaderBytes: apiMaxHeaderBytes}
	go a.srv.Serve(a.ln)
}

// Path is the socket's path.
func (a *API) Path() string { return a.path }

// Close stops serving and removes the socket.
func (a *API) Close() error {
	var err error
	if a.srv != nil {
		err = a.srv.Close()
	} else {
		err = a.ln.Close()
	}
	os.Remove(a.path)
	return err
}

func newHandler(d *Daemon) http.Handler {
	mux := http.NewServeMux()
	p := "/" + APIVersion
	mux.HandleFunc("GET "+p+"/status", func(w http.ResponseWriter, r *http.Request) {
		st := Status{NextID: d.Programs.NextID()}
		for _, dp := range d.Dataplanes() {
			us := UplinkStatus{Inventory: dp.Inventory(), XDPMode: dp.Mode().String()}
			us.Stats, _ = dp.Stats()
			for _, vm := range dp.VMs() {
				us.VMs = append(us.VMs, d.vmStatus(vm))
			}
			st.Uplinks = append(st.Uplinks, us)
		}
		writeJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("GET "+p+"/caps", func(w http.ResponseWriter, r *http.Request) {
		c := guestprog.Caps(d.Programs.limits)
		if name := r.URL.Query().Get("vm"); name != "" {
			var err error
			if c, err = d.vmCaps(name); err != nil {
				writeErr(w, err)
				return
			}
		}
		writeJSON(w, http.StatusOK, c)
	})
	mux.HandleFunc("GET "+p+"/programs", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.Programs.List())
	})
	mux.HandleFunc("GET "+p+"/programs/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
		if err != nil {
			writeErr(w, fmt.Errorf("%w: program ID %q is not a number", errBadRequest, r.PathValue("id")))
			return
		}
		rec, err := d.Programs.Show(id)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, rec)
	})
	mux.HandleFunc("POST "+p+"/vms/{vm}/program", func(w http.ResponseWriter, r *http.Request) {
		obj, err := readObject(r)
		if err != nil {
			writeErr(w, err)
			return
		}
		rec, err := d.Programs.Load(r.PathValue("vm"), obj, r.URL.Query().Get("entry"))
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, rec)
	})
	mux.HandleFunc("PUT "+p+"/vms/{vm}/program", func(w http.ResponseWriter, r *http.Request) {
		expect, err := expectParam(r)
		if err != nil {
			writeErr(w, err)
			return
		}
		obj, err := readObject(r)
		if err != nil {
			writeErr(w, err)
			return
		}
		rec, err := d.Programs.Replace(r.PathValue("vm"), expect, obj, r.URL.Query().Get("entry"))
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, rec)
	})
	mux.HandleFunc("DELETE "+p+"/vms/{vm}/program", func(w http.ResponseWriter, r *http.Request) {
		expect, err := expectParam(r)
		if err != nil {
			writeErr(w, err)
			return
		}
		if err := d.Programs.Remove(r.PathValue("vm"), expect); err != nil {
			writeErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	addVMRoutes(mux, d, p)
	addMigrationRoutes(mux, d, p)
	return mux
}

func (d *Daemon) vmStatus(vm *hostnet.VM) VMStatus {
	vs := VMStatus{Name: vm.Name(), Uplink: vm.Uplink(), Slot: vm.Slot(), MAC: vm.MAC().String(), Queues: vm.Queues(), Delivery: "tap", Ports: vm.Ports()}
	if vm.Delivery() == guestprog.DeliverXSK {
		vs.Delivery = "vhost-user"
		d.mu.Lock()
		if p := d.ports[vm.Name()]; p != nil {
			vs.VhostUserSocket = p.Socket()
			vs.FrontEndConnected = p.FrontEndConnected()
			if t := p.NoFrontEndSince(); !t.IsZero() {
				vs.NoFrontEndSeconds = time.Since(t).Round(time.Second).Seconds()
			}
			for _, q := range p.Device().Stats() {
				vs.VhostQueueBreaks += q.Broken
			}
			zs := p.ZeroCopy()
			vs.ZeroCopy = &zs
		}
		d.mu.Unlock()
	}
	if vm.Tap() != nil {
		vs.Tap = vm.Tap().Name()
	} else if vm.Delivery() == guestprog.DeliverTap {
		vs.TapWaiting = true
	}
	d.mu.Lock()
	if a := d.agents[vm.Name()]; a != nil {
		vs.AgentSocket = a.path
	}
	d.mu.Unlock()
	d.smu.Lock()
	if e := d.entries[vm.Name()]; e != nil {
		vs.UUID, vs.TapMode = e.cfg.UUID, e.cfg.TapMode
	}
	d.smu.Unlock()
	vs.Program, _ = d.Programs.Current(vm.Name())
	vs.ProgramProblem = d.Programs.Problem(vm.Name())
	vs.Verdicts, _ = vm.Verdicts()
	vs.Cost = d.programCost(vm)
	vs.Frozen, vs.Incoming = vm.Frozen(), d.Incoming(vm.Name())
	if vm.Tap() != nil {
		vs.TX, _ = vm.TXStats()
	}
	vs.Warnings = d.redirectWarningsOf(vm)
	return vs
}

// vmCaps is what a VM's program may use, with the VM's own details.
func (d *Daemon) vmCaps(name string) (guestprog.Capabilities, error) {
	c := guestprog.Caps(d.Programs.limits)
	vm, ok := d.VM(name)
	if !ok {
		return c, fmt.Errorf("%w: %q", ErrNoSuchVM, name)
	}
	c.VM = name
	c.DeliveryModes = []string{vmport.ModeCopy}
	if vm.Delivery() == guestprog.DeliverXSK {
		c.DeliveryModes = append(c.DeliveryModes, vmport.ModeZeroCopy)
	}
	for _, port := range vm.Ports() {
		c.Ports = append(c.Ports, port.Number)
	}
	for _, dp := range d.Dataplanes() {
		if up, _, _ := dp.Uplink(); up == vm.Uplink() {
			c.UplinkFeatures = dp.Inventory().XDP
		}
	}
	return c, nil
}

// AddVMRequest is the body of POST /v1/vms.
type AddVMRequest struct {
	Uplink string   `json:"uplink"`
	VM     VMConfig `json:"vm"`
}

// AddVMsRequest is the body of POST /v1/vm-batch: VMs added all together
// or not at all (a libvirt domain's interfaces).
type AddVMsRequest struct {
	VMs []AddVMRequest `json:"vms"`
}

// AddPortRequest is the body of POST /v1/vms/{vm}/ports.
type AddPortRequest struct {
	Port   uint32 `json:"port"`
	Ifname string `json:"ifname"`
	// CrossVM allows the port to be another VM's tap (refused otherwise).
	CrossVM bool `json:"cross_vm,omitempty"`
}

// decodeJSON reads a JSON request body into v: Content-Type
// application/json, at most apiMaxJSONBody bytes, one JSON value with no
// field v does not know and nothing after it.
func decodeJSON(r *http.Request, v any) error {
	if err := requireContentType(r, "application/json"); err != nil {
		return err
	}
	body := &countingReader{r: io.LimitReader(r.Body, apiMaxJSONBody+1)}
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if body.n > apiMaxJSONBody {
			return fmt.Errorf("%w: request body: larger than %d bytes", errBadRequest, apiMaxJSONBody)
		}
		return fmt.Errorf("%w: request body: %v", errBadRequest, err)
	}
	var extra json.RawMessage
	if err := dec.Decode(&extra); err != io.EOF {
		if body.n > apiMaxJSONBody {
			return fmt.Errorf("%w: request body: larger than %d bytes", errBadRequest, apiMaxJSONBody)
		}
		return fmt.Errorf("%w: request body: data after the JSON object; send exactly one object", errBadRequest)
	}
	return nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// errUnsupportedMedia is a request body of the wrong Content-Type (415).
var errUnsupportedMedia = errors.New("unsupported media type")

// requireContentType refuses a request whose body is not of media type
// want (parameters such as charset are allowed).
func requireContentType(r *http.Request, want string) error {
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if ct == "" || err != nil || mt != want {
		if ct == "" {
			ct = "none"
		}
		return fmt.Errorf("%w: Content-Type %q: %s %s takes Content-Type: %s", errUnsupportedMedia, ct, r.Method, r.URL.Path, want)
	}
	return nil
}

func addVMRoutes(mux *http.ServeMux, d *Daemon, p string) {
	mux.HandleFunc("GET "+p+"/vms", func(w http.ResponseWriter, r *http.Request) {
		out := []VMStatus{}
		for _, dp := range d.Dataplanes() {
			for _, vm := range dp.VMs() {
				out = append(out, d.vmStatus(vm))
			}
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET "+p+"/vms/{vm}", func(w http.ResponseWriter, r *http.Request) {
		vm, ok := d.VM(r.PathValue("vm"))
		if !ok {
			writeErr(w, fmt.Errorf("%w: %q", ErrNoSuchVM, r.PathValue("vm")))
			return
		}
		writeJSON(w, http.StatusOK, d.vmStatus(vm))
	})
	mux.HandleFunc("POST "+p+"/vms", func(w http.ResponseWriter, r *http.Request) {
		var req AddVMRequest
		if err := decodeJSON(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		if req.Uplink == "" {
			writeErr(w, fmt.Errorf("%w: uplink: required (the uplink the VM's traffic arrives on; see 'xdp-hostd status')", errBadRequest))
			return
		}
		vm, err := d.AddVM(req.Uplink, req.VM)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, d.vmStatus(vm))
	})
	mux.HandleFunc("POST "+p+"/vm-batch", func(w http.ResponseWriter, r *http.Request) {
		var req AddVMsRequest
		if err := decodeJSON(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		vms, err := d.AddVMs(r.Context(), req.VMs)
		if err != nil {
			writeErr(w, err)
			return
		}
		out := make([]VMStatus, 0, len(vms))
		for _, vm := range vms {
			out = append(out, d.vmStatus(vm))
		}
		writeJSON(w, http.StatusCreated, out)
	})
	mux.HandleFunc("DELETE "+p+"/vms/{vm}", func(w http.ResponseWriter, r *http.Request) {
		remove := d.RemoveVM
		if q := r.URL.Query(); q.Has("uuid") || q.Has("mac") {
			// Only if its owner registered it (the libvirt hook's release).
			remove = func(name string) error {
				return d.RemoveOwnedVM(name, VMOwner{UUID: q.Get("uuid"), MAC: q.Get("mac")})
			}
		}
		if err := remove(r.PathValue("vm")); err != nil {
			writeErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET "+p+"/vms/{vm}/ports", func(w http.ResponseWriter, r *http.Request) {
		vm, ok := d.VM(r.PathValue("vm"))
		if !ok {
			writeErr(w, fmt.Errorf("%w: %q", ErrNoSuchVM, r.PathValue("vm")))
			return
		}
		writeJSON(w, http.StatusOK, vm.Ports())
	})
	mux.HandleFunc("POST "+p+"/vms/{vm}/tap", func(w http.ResponseWriter, r *http.Request) {
		var req AttachTapRequest
		if err := decodeJSON(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		if err := d.AttachTap(r.PathValue("vm"), req.Tap, req.Owner); err != nil {
			writeErr(w, err)
			return
		}
		vm, ok := d.VM(r.PathValue("vm"))
		if !ok {
			writeErr(w, fmt.Errorf("%w: %q", ErrNoSuchVM, r.PathValue("vm")))
			return
		}
		writeJSON(w, http.StatusOK, d.vmStatus(vm))
	})
	mux.HandleFunc("POST "+p+"/vms/{vm}/ports", func(w http.ResponseWriter, r *http.Request) {
		vm, ok := d.VM(r.PathValue("vm"))
		if !ok {
			writeErr(w, fmt.Errorf("%w: %q", ErrNoSuchVM, r.PathValue("vm")))
			return
		}
		var req AddPortRequest
		if err := decodeJSON(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		if _, err := d.AddPort(vm.Name(), req.Port, req.Ifname, req.CrossVM); err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, vm.Ports())
	})
	mux.HandleFunc("DELETE "+p+"/vms/{vm}/ports/{port}", func(w http.ResponseWriter, r *http.Request) {
		vm, ok := d.VM(r.PathValue("vm"))
		if !ok {
			writeErr(w, fmt.Errorf("%w: %q", ErrNoSuchVM, r.PathValue("vm")))
			return
		}
		n, err := strconv.ParseUint(r.PathValue("port"), 10, 32)
		if err != nil {
			writeErr(w, fmt.Errorf("%w: port %q is not a number", errBadRequest, r.PathValue("port")))
			return
		}
		if err := d.RemovePort(vm.Name(), uint32(n)); err != nil {
			writeErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

var errBadRequest = errors.New("bad request")

func expectParam(r *http.Request) (uint64, error) {
	s := r.URL.Query().Get("expect")
	if s == "" {
		return 0, fmt.Errorf("%w: expect: give the ID of the program you believe is current (see 'xdp-hostd prog list')", errBadRequest)
	}
	id, err := strconv.ParseUint(s, 10, 64)
	if err != nil || id == 0 {
		return 0, fmt.Errorf("%w: expect: %q is not a program ID", errBadRequest, s)
	}
	return id, nil
}

// readObject reads a program object sent as application/octet-stream.
func readObject(r *http.Request) ([]byte, error) {
	if err := requireContentType(r, "application/octet-stream"); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, MaxObjectSize+1))
	if err != nil {
		return nil, fmt.Errorf("%w: read the object: %v", errBadRequest, err)
	}
	if len(b) > MaxObjectSize {
		return nil, fmt.Errorf("%w: the object is larger than %d bytes", errBadRequest, MaxObjectSize)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: no object in the request body", errBadRequest)
	}
	return b, nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, err error) {
	body := APIError{Error: err.Error()}
	code := http.StatusInternalServerError
	var refused *guestprog.RefusedError
	var verr *guestprog.VerifierError
	switch {
	case errors.As(err, &refused):
		code, body.Violations = http.StatusUnprocessableEntity, refused.Report.Violations
	case errors.As(err, &verr):
		code, body.VerifierLog = http.StatusUnprocessableEntity, verr.Log
	case errors.Is(err, guestprog.ErrOverQuota):
		code = http.StatusUnprocessableEntity // the kernel charged more than the quota: unloaded
	case errors.Is(err, migration.ErrNotCarried):
		code = http.StatusUnprocessableEntity
	case errors.Is(err, ErrNotMigratable):
		code = http.StatusConflict
	case errors.Is(err, migration.ErrDocument), errors.Is(err, guestprog.ErrInvalidObject), errors.Is(err, errBadRequest), errors.Is(err, ErrConfig), errors.Is(err, hostnet.ErrInvalid):
		code = http.StatusBadRequest
	case errors.Is(err, ErrNoSuchVM), errors.Is(err, ErrNoSuchUplink), errors.Is(err, ErrNoSuchProgram), errors.Is(err, hostnet.ErrNotFound), errors.Is(err, hostnet.ErrNoSuchInterface):
		code = http.StatusNotFound
	case errors.Is(err, ErrStale), errors.Is(err, ErrHasProgram), errors.Is(err, hostnet.ErrExists):
		code = http.StatusConflict
	case errors.Is(err, ErrNotOwner):
		code = http.StatusConflict
	case errors.Is(err, errUnsupportedMedia):
		code = http.StatusUnsupportedMediaType
	}
	writeJSON(w, code, body)
}

func addMigrationRoutes(mux *http.ServeMux, d *Daemon, p string) {
	mux.HandleFunc("POST "+p+"/vms/{vm}/export", func(w http.ResponseWriter, r *http.Request) {
		final := false
		if s := r.URL.Query().Get("final"); s != "" {
			var err error
			if final, err = strconv.ParseBool(s); err != nil {
				writeErr(w, fmt.Errorf("%w: final: %q is not true or false", errBadRequest, s))
				return
			}
		}
		doc, err := d.Export(r.PathValue("vm"), final)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, doc)
	})
	mux.HandleFunc("POST "+p+"/vms/{vm}/thaw", func(w http.ResponseWriter, r *http.Request) {
		if err := d.Thaw(r.PathValue("vm")); err != nil {
			writeErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST "+p+"/migrations", func(w http.ResponseWriter, r *http.Request) {
		if err := requireContentType(r, "application/json"); err != nil {
			writeErr(w, err)
			return
		}
		body := &countingReader{r: io.LimitReader(r.Body, MaxImportBody+1)}
		dec := json.NewDecoder(body)
		dec.DisallowUnknownFields()
		var req ImportRequest
		if err := dec.Decode(&req); err != nil {
			if body.n > MaxImportBody {
				writeErr(w, fmt.Errorf("%w: request body: larger than %d bytes", errBadRequest, MaxImportBody))
				return
			}
			writeErr(w, fmt.Errorf("%w: request body: %v", errBadRequest, err))
			return
		}
		res, err := d.Import(r.Context(), req)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
	mux.HandleFunc("DELETE "+p+"/migrations/{vm}", func(w http.ResponseWriter, r *http.Request) {
		if err := d.AbortImport(r.PathValue("vm")); err != nil {
			writeErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}
