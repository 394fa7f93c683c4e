package guestprog

import (
	"bytes"
	"debug/elf"
	"fmt"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
)

// ABIVersion is XDP_HOSTD_ABI_VERSION of bpf/include/xdp_hostd.h.
const ABIVersion = 2

// Verdicts of the guest ABI beyond the XDP actions (xdp_hostd.h), checked
// against the header by a test.
const (
	VerdictPort      = 0x100 // XDP_HOSTD_VERDICT_PORT: + port number
	VerdictBroadcast = 0x200 // XDP_HOSTD_VERDICT_BROADCAST
	MaxPorts         = 64    // XDP_HOSTD_MAX_PORTS
)

// Rule names one rule of the static policy.
type Rule string

// The rules of the static policy. A guest program breaking any of them is
// refused before the kernel sees it.
const (
	RuleProgramType    Rule = "program-type"        // only plain XDP programs
	RuleEntry          Rule = "entry"               // exactly one entry program, or the one named
	RuleBTF            Rule = "btf-required"        // compile with -g
	RuleHelper         Rule = "helper"              // a helper not on the allowed list
	RuleRedirectIfidx  Rule = "redirect-by-ifindex" // bpf_redirect bypasses the port table
	RuleRedirectTarget Rule = "redirect-map-target" // a redirect map (devmap, xskmap, cpumap) declared by the guest
	RuleRedirectHelper Rule = "redirect-helper"     // bpf_redirect_map: the host issues every redirect
	RuleABIVersion     Rule = "abi-version"         // uses the version 1 port_table
	RuleHostState      Rule = "host-state"          // helpers that read the host's state
	RuleHostOutput     Rule = "host-output"         // helpers that write to the host's logs or buffers
	RuleKernelMemory   Rule = "kernel-memory"       // probe reads, kernel symbols, kfuncs
	RuleTailCall       Rule = "tail-call"           // tail calls only within the program's own array
	RuleMapType        Rule = "map-type"            // a map type not on the allowed list
	RuleMapInMap       Rule = "map-in-map"
	RulePinnedMap      Rule = "pinned-map"
	RuleMapQuota       Rule = "map-quota"         // more maps than the limit
	RuleMemoryQuota    Rule = "memory-quota"      // maps and programs need more kernel memory than the VM's quota
	RuleProgramLimit   Rule = "program-limit"     // more programs than the limit
	RuleInsnLimit      Rule = "instruction-limit" // more instructions than the limit
	RuleReservedName   Rule = "reserved-name"     // names starting with hostd_
	RuleFrags          Rule = "xdp-frags"         // multi-buffer programs
)

// Limits bound what one VM's program may use. The zero value of a field
// means its default.
type Limits struct {
	MaxInstructions int `json:"max_instructions"` // over all programs of the object; default 16384
	// Memory is the kernel memory the object's maps and programs may
	// cost: the policy's estimate before loading (at the maps' fullest),
	// the kernel's own figures after. Default 16 MiB.
	Memory      uint64 `json:"memory_bytes"`
	MaxMaps     int    `json:"max_maps"`     // default 32
	MaxPrograms int    `json:"max_programs"` // programs per object (entry and tail-call targets); default 64
	// PossibleCPUs multiplies per-CPU map values; default the host's
	// possible CPUs (/sys/devices/system/cpu/possible), which is what the
	// kernel allocates for, whatever CPUs the daemon may run on.
	PossibleCPUs int `json:"possible_cpus"`
	// MaxCost is the budget of worst-case cost per packet, in
	// instructions (see cost.go); default DefaultMaxCost.
	MaxCost uint64 `json:"max_cost_instructions"`
}

// DefaultLimits are the limits of a VM unless the operator sets others.
func DefaultLimits() Limits { return Limits{}.withDefaults() }

func (l Limits) withDefaults() Limits {
	if l.MaxInstructions == 0 {
		l.MaxInstructions = 16384
	}
	if l.Memory == 0 {
		l.Memory = 16 << 20
	}
	if l.MaxMaps == 0 {
		l.MaxMaps = 32
	}
	if l.MaxCost == 0 {
		l.MaxCost = DefaultMaxCost
	}
	if l.MaxPrograms == 0 {
		l.MaxPrograms = 64
	}
	if l.PossibleCPUs == 0 {
		l.PossibleCPUs = PossibleCPUs()
	}
	return l
}

// helperRule is the policy for one helper: allowed, or refused by rule.
type helperRule struct {
	rule Rule // "" when allowed
	why  string
}

// helpers is the one list of helpers a guest program may call. Helpers not
// in it are refused under RuleHelper; the refused ones listed here get a
// more specific rule and reason.
var helpers = map[asm.BuiltinFunc]helperRule{
	asm.FnMapLookupElem:     {},
	asm.FnMapUpdateElem:     {},
	asm.FnMapDeleteElem:     {},
	asm.FnMapPushElem:       {},
	asm.FnMapPopElem:        {},
	asm.FnMapPeekElem:       {},
	asm.FnForEachMapElem:    {},
	asm.FnKtimeGetNs:        {},
	asm.FnKtimeGetBootNs:    {},
	asm.FnKtimeGetCoarseNs:  {},
	asm.FnJiffies64:         {},
	asm.FnGetPrandomU32:     {},
	asm.FnGetSmpProcessorId: {},
	asm.FnGetNumaNodeId:     {},
	asm.FnCsumDiff:          {},
	asm.FnXdpAdjustHead:     {},
	asm.FnXdpAdjustTail:     {},
	asm.FnXdpAdjustMeta:     {},
	asm.FnXdpGetBuffLen:     {},
	asm.FnXdpLoadBytes:      {},
	asm.FnXdpStoreBytes:     {},
	asm.FnSpinLock:          {},
	asm.FnSpinUnlock:        {},
	asm.FnLoop:              {},
	asm.FnTailCall:          {}, // into the program's own program arrays only: every map it has is its own

	asm.FnRedirectMap:   {RuleRedirectHelper, redirectHow},
	asm.FnRedirect:      {RuleRedirectIfidx, "bpf_redirect sends to any interface by ifindex, bypassing the VM's port table; " + redirectHow},
	asm.FnRedirectNeigh: {RuleRedirectIfidx, "bpf_redirect_neigh sends to any interface by ifindex; " + redirectHow},
	asm.FnRedirectPeer:  {RuleRedirectIfidx, "bpf_redirect_peer sends to any interface by ifindex; " + redirectHow},
	asm.FnCloneRedirect: {RuleRedirectIfidx, "bpf_clone_redirect sends to any interface by ifindex; " + redirectHow},

	asm.FnFibLookup:          {RuleHostState, "bpf_fib_lookup reads the host's routing tables"},
	asm.FnCheckMtu:           {RuleHostState, "bpf_check_mtu reads the host's interfaces"},
	asm.FnSkLookupTcp:        {RuleHostState, "socket lookups read the host's sockets"},
	asm.FnSkLookupUdp:        {RuleHostState, "socket lookups read the host's sockets"},
	asm.FnSkcLookupTcp:       {RuleHostState, "socket lookups read the host's sockets"},
	asm.FnGetNetnsCookie:     {RuleHostState, "the network namespace cookie identifies host state"},
	asm.FnGetCurrentPidTgid:  {RuleHostState, "reads the host's current task"},
	asm.FnGetCurrentUidGid:   {RuleHostState, "reads the host's current task"},
	asm.FnGetCurrentComm:     {RuleHostState, "reads the host's current task"},
	asm.FnGetCurrentTask:     {RuleHostState, "reads the host's current task"},
	asm.FnGetCurrentTaskBtf:  {RuleHostState, "reads the host's current task"},
	asm.FnGetCurrentCgroupId: {RuleHostState, "reads the host's current task"},
	asm.FnPerfEventRead:      {RuleHostState, "reads host performance counters"},

	asm.FnTracePrintk:      {RuleHostOutput, "bpf_trace_printk writes into the host's trace buffer; count in a map of your own instead"},
	asm.FnTraceVprintk:     {RuleHostOutput, "bpf_trace_vprintk writes into the host's trace buffer"},
	asm.FnSnprintf:         {RuleHostOutput, "formatted output is for host tools"},
	asm.FnPerfEventOutput:  {RuleHostOutput, "perf event output goes to host buffers"},
	asm.FnXdpOutput:        {RuleHostOutput, "bpf_xdp_output writes into host perf buffers"},
	asm.FnRingbufOutput:    {RuleHostOutput, "ring buffers are host-side output"},
	asm.FnRingbufReserve:   {RuleHostOutput, "ring buffers are host-side output"},
	asm.FnRingbufSubmit:    {RuleHostOutput, "ring buffers are host-side output"},
	asm.FnRingbufDiscard:   {RuleHostOutput, "ring buffers are host-side output"},
	asm.FnRingbufQuery:     {RuleHostOutput, "ring buffers are host-side output"},
	asm.FnSendSignal:       {RuleHostOutput, "signals host processes"},
	asm.FnSendSignalThread: {RuleHostOutput, "signals host processes"},

	asm.FnProbeRead:          {RuleKernelMemory, "reads kernel memory"},
	asm.FnProbeReadStr:       {RuleKernelMemory, "reads kernel memory"},
	asm.FnProbeReadKernel:    {RuleKernelMemory, "reads kernel memory"},
	asm.FnProbeReadKernelStr: {RuleKernelMemory, "reads kernel memory"},
	asm.FnProbeReadUser:      {RuleKernelMemory, "reads process memory"},
	asm.FnProbeReadUserStr:   {RuleKernelMemory, "reads process memory"},
	asm.FnProbeWriteUser:     {RuleKernelMemory, "writes process memory"},
	asm.FnCopyFromUser:       {RuleKernelMemory, "reads process memory"},
	asm.FnPerCpuPtr:          {RuleKernelMemory, "dereferences kernel per-CPU variables"},
	asm.FnThisCpuPtr:         {RuleKernelMemory, "dereferences kernel per-CPU variables"},
	asm.FnKallsymsLookupName: {RuleKernelMemory, "looks up kernel symbols"},
	asm.FnSysBpf:             {RuleKernelMemory, "calls the bpf() syscall"},
}

// redirectHow says how a guest program redirects under ABI version 2.
const redirectHow = "the host issues every redirect: return xdp_hostd_redirect_port(port) or xdp_hostd_broadcast() from xdp_hostd.h (ABI 2)"

// mapTypes is the one list of map types a guest program may declare.
var mapTypes = map[ebpf.MapType]string{
	ebpf.Hash:         "hash",
	ebpf.Array:        "array (also .data, .rodata and .bss)",
	ebpf.PerCPUHash:   "per-CPU hash",
	ebpf.PerCPUArray:  "per-CPU array",
	ebpf.LRUHash:      "LRU hash",
	ebpf.LRUCPUHash:   "per-CPU LRU hash",
	ebpf.LPMTrie:      "longest-prefix-match trie",
	ebpf.Queue:        "queue",
	ebpf.Stack:        "stack",
	ebpf.BloomFilter:  "bloom filter",
	ebpf.ProgramArray: "program array (the program's own tail calls)",
}

// portTableType is the only device map a guest declares: the host rebinds it.
const portTableType = ebpf.DevMapHash

// Violation is one broken rule.
type Violation struct {
	Rule    Rule   `json:"rule"`
	Program string `json:"program,omitempty"`
	// At is where in the program: function+offset in instructions, and the
	// source line when BTF has it.
	At      string `json:"at,omitempty"`
	Map     string `json:"map,omitempty"`
	Message string `json:"message"`
}

func (v Violation) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "[%s]", v.Rule)
	if v.Program != "" {
		fmt.Fprintf(&b, " program %s", v.Program)
	}
	if v.At != "" {
		fmt.Fprintf(&b, " at %s", v.At)
	}
	if v.Map != "" {
		fmt.Fprintf(&b, " map %s", v.Map)
	}
	fmt.Fprintf(&b, ": %s", v.Message)
	return b.String()
}

// Report is the outcome of the static policy.
type Report struct {
	Accepted     bool     `json:"accepted"`
	Entry        string   `json:"entry,omitempty"`
	Programs     []string `json:"programs"`
	Maps         []string `json:"maps"`
	Instructions int      `json:"instructions"`
	// Estimated kernel memory: maps at their fullest, programs, the sum.
	MapMemory     uint64      `json:"map_memory_bytes"`
	ProgramMemory uint64      `json:"program_memory_bytes"`
	Memory        uint64      `json:"memory_bytes"`
	Cost          CostReport  `json:"cost"`
	Violations    []Violation `json:"violations,omitempty"`
}

func (r *Report) add(v Violation) {
	for _, o := range r.Violations {
		if o == v {
			return
		}
	}
	r.Violations = append(r.Violations, v)
}

// Check runs the static policy on a guest object without loading anything.
// err is set only when the input cannot be used at all (not a BPF ELF
// object); a refused program gives a Report listing every violation. The
// Object is returned when the program is accepted.
func Check(obj []byte, entry string, lim Limits) (*Report, *Object, error) {
	lim = lim.withDefaults()
	spec, err := parseSpec(obj)
	if err != nil {
		if bpfWithoutBTF(obj) {
			// BTF-defined maps cannot even be parsed without BTF: that is
			// the btf-required rule, not unusable input.
			r := &Report{Violations: []Violation{{Rule: RuleBTF, Message: "the object has no BTF: compile with clang -O2 -g -target bpf"}}}
			return r, nil, nil
		}
		return nil, nil, err
	}
	r := &Report{}
	for _, name := range programNames(spec) {
		r.Programs = append(r.Programs, name)
	}
	for name := range spec.Maps {
		r.Maps = append(r.Maps, name)
	}
	sort.Strings(r.Maps)

	if spec.Types == nil {
		r.add(Violation{Rule: RuleBTF, Message: "the object has no BTF: compile with clang -O2 -g -target bpf"})
	}
	checkMaps(spec, lim, r)
	checkQuota(spec, lim, r)
	for _, name := range r.Programs {
		checkProgram(spec, name, r)
	}
	if r.Instructions > lim.MaxInstructions {
		r.add(Violation{Rule: RuleInsnLimit, Message: fmt.Sprintf("%d instructions over all programs; the limit is %d", r.Instructions, lim.MaxInstructions)})
	}

	if entry == "" {
		entry, err = findEntry(spec)
	} else if _, ok := spec.Programs[entry]; !ok {
		err = fmt.Errorf("no program named %q; the object has %s", entry, strings.Join(r.Programs, ", "))
	}
	if err != nil {
		r.add(Violation{Rule: RuleEntry, Message: err.Error()})
	} else {
		r.Entry = entry
		checkEntryNotTarget(spec, entry, r)
		checkCost(spec, entry, lim, r)
	}
	r.Accepted = len(r.Violations) == 0
	if !r.Accepted {
		return r, nil, nil
	}
	return r, &Object{Spec: spec, Entry: entry, Limits: lim, cost: r.Cost}, nil
}

func checkMaps(spec *ebpf.CollectionSpec, lim Limits, r *Report) {
	if n := len(spec.Maps); n > lim.MaxMaps {
		r.add(Violation{Rule: RuleMapQuota, Message: fmt.Sprintf("%d maps; the limit is %d", n, lim.MaxMaps)})
	}
	checkKconfig(spec, r)
	var total uint64
	for _, name := range r.Maps {
		m := spec.Maps[name]
		if strings.HasPrefix(name, ReservedPrefix) {
			r.add(Violation{Rule: RuleReservedName, Map: name, Message: fmt.Sprintf("map names starting with %q are the host's; rename it", ReservedPrefix)})
		}
		if m.Pinning != ebpf.PinNone {
			r.add(Violation{Rule: RulePinnedMap, Map: name, Message: "pinned maps would be shared with the host or other programs; remove the pinning attribute"})
		}
		if m.InnerMap != nil || m.Type == ebpf.ArrayOfMaps || m.Type == ebpf.HashOfMaps {
			r.add(Violation{Rule: RuleMapInMap, Map: name, Message: "maps of maps are not allowed"})
			continue
		}
		switch {
		case name == PortTableMap && m.Type == portTableType:
			// Declared by a version 1 xdp_hostd.h. Harmless while no
			// instruction uses it (checkProgram): it is not created.
			continue
		case m.Type == ebpf.DevMap || m.Type == ebpf.DevMapHash || m.Type == ebpf.XSKMap || m.Type == ebpf.CPUMap:
			r.add(Violation{Rule: RuleRedirectTarget, Map: name, Message: fmt.Sprintf("a %s is a redirect target; a VM's program may redirect only to the ports of its table: %s", m.Type, redirectHow)})
			continue
		}
		if _, ok := mapTypes[m.Type]; !ok {
			r.add(Violation{Rule: RuleMapType, Map: name, Message: fmt.Sprintf("map type %s is not allowed (allowed: %s)", m.Type, allowedMapTypeNames())})
			continue
		}
		total = satAdd(total, mapMemory(m, lim.PossibleCPUs))
	}
	r.MapMemory = total // checked with the programs' in checkQuota
}

// bpfWithoutBTF reports whether obj is a BPF ELF object without a .BTF
// section.
func bpfWithoutBTF(obj []byte) (yes bool) {
	defer func() {
		if recover() != nil {
			yes = false
		}
	}()
	f, err := elf.NewFile(bytes.NewReader(obj))
	if err != nil || f.Machine != elf.EM_BPF {
		return false
	}
	return f.Section(".BTF") == nil
}

func allowedMapTypeNames() string {
	var names []string
	for _, n := range mapTypes {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// bpfFXDPHasFrags is BPF_F_XDP_HAS_FRAGS.
const bpfFXDPHasFrags = 1 << 5

func checkProgram(spec *ebpf.CollectionSpec, name string, r *Report) {
	p := spec.Programs[name]
	if p.Type != ebpf.XDP || (p.AttachType != ebpf.AttachNone && p.AttachType != ebpf.AttachXDP) {
		r.add(Violation{Rule: RuleProgramType, Program: name, Message: fmt.Sprintf("section %q is a %s program (attach type %s); only plain XDP programs (SEC(\"xdp\")) run on a VM's queue", p.SectionName, p.Type, p.AttachType)})
		return
	}
	if p.Flags&bpfFXDPHasFrags != 0 {
		r.add(Violation{Rule: RuleFrags, Program: name, Message: "multi-buffer XDP (SEC(\"xdp.frags\")) is not supported behind the host's dispatcher; use SEC(\"xdp\")"})
	}
	r.Instructions += len(p.Instructions)

	fn, fnStart := "", 0
	for i, ins := range p.Instructions {
		if sym := ins.Symbol(); sym != "" {
			fn, fnStart = sym, i
			if strings.HasPrefix(sym, ReservedPrefix) {
				r.add(Violation{Rule: RuleReservedName, Program: name, Message: fmt.Sprintf("function %q: names starting with %q are the host's; rename it", sym, ReservedPrefix)})
			}
		}
		at := func() string { return where(p.Instructions, i, fn, fnStart) }
		switch {
		case ins.IsKfuncCall():
			r.add(Violation{Rule: RuleKernelMemory, Program: name, At: at(), Message: "calls a kernel function (kfunc); guest programs may call BPF helpers only"})
		case ins.IsBuiltinCall():
			fnID := asm.BuiltinFunc(ins.Constant)
			hr, ok := helpers[fnID]
			if !ok {
				r.add(Violation{Rule: RuleHelper, Program: name, At: at(), Message: fmt.Sprintf("helper %s is not on the allowed list (see `xdp-hostd caps`)", helperName(fnID))})
				continue
			}
			if hr.rule != "" {
				r.add(Violation{Rule: hr.rule, Program: name, At: at(), Message: fmt.Sprintf("%s: %s", helperName(fnID), hr.why)})
				continue
			}
		case ins.IsLoadFromMap() && ins.Reference() == PortTableMap:
			r.add(Violation{Rule: RuleABIVersion, Program: name, At: at(), Map: PortTableMap,
				Message: fmt.Sprintf("uses port_table of guest ABI version 1; rebuild against xdp_hostd.h version %d: %s", ABIVersion, redirectHow)})
		case ins.OpCode.IsDWordLoad() && ins.Src == pseudoBTFID:
			r.add(Violation{Rule: RuleKernelMemory, Program: name, At: at(), Message: "loads the address of a kernel symbol (__ksym)"})
		}
	}
}

// checkEntryNotTarget refuses a program array that lists the entry program:
// a tail call into it would run the guest inside its own frame.
func checkEntryNotTarget(spec *ebpf.CollectionSpec, entry string, r *Report) {
	for name, m := range spec.Maps {
		if m.Type != ebpf.ProgramArray {
			continue
		}
		for _, kv := range m.Contents {
			if v, ok := kv.Value.(string); ok && v == entry {
				r.add(Violation{Rule: RuleTailCall, Map: name, Message: fmt.Sprintf("lists the entry program %s; tail calls may go only to the object's other programs", entry)})
			}
		}
	}
}

// mapInR1 finds the map whose address was loaded into r1 for the call at
// index call, looking back within the straight-line code before it. It gives
// up at jumps, calls and function starts: the map-type rule already keeps
// every redirect-capable map but port_table out of a guest object, so this
// only serves to name the instruction.
func mapInR1(insns asm.Instructions, call int) (string, bool) {
	for j := call - 1; j >= 0; j-- {
		ins := insns[j]
		if ins.Dst == asm.R1 && writesDst(ins) {
			if ins.IsLoadFromMap() && ins.Src == asm.PseudoMapFD {
				return ins.Reference(), true
			}
			return "", false
		}
		if ins.OpCode.JumpOp() != asm.InvalidJumpOp || ins.Symbol() != "" {
			return "", false
		}
	}
	return "", false
}

func writesDst(ins asm.Instruction) bool {
	switch ins.OpCode.Class() {
	case asm.ALUClass, asm.ALU64Class, asm.LdClass, asm.LdXClass:
		return true
	}
	return false
}

// where names an instruction: function+offset and the source line.
func where(insns asm.Instructions, i int, fn string, fnStart int) string {
	off := 0
	for k := fnStart; k < i; k++ {
		off += int(insns[k].Size() / asm.InstructionSize)
	}
	s := fmt.Sprintf("%s+%d", fn, off)
	for k := i; k >= fnStart; k-- {
		if src := insns[k].Source(); src != nil {
			line := strings.TrimSpace(src.String())
			if l, ok := src.(*btf.Line); ok {
				line = fmt.Sprintf("%s:%d: %s", l.FileName(), l.LineNumber(), strings.TrimSpace(l.Line()))
			}
			if line != "" {
				s += " (" + line + ")"
			}
			break
		}
	}
	return s
}

func helperName(fn asm.BuiltinFunc) string {
	s := fn.String()
	if strings.HasPrefix(s, "Fn") {
		return "bpf_" + camelToSnake(strings.TrimPrefix(s, "Fn"))
	}
	return fmt.Sprintf("helper #%d", int(fn))
}

func camelToSnake(s string) string {
	var b strings.Builder
	for i, c := range s {
		if c >= 'A' && c <= 'Z' {
			if i > 0 {
				b.WriteByte('_')
			}
			c += 'a' - 'A'
		}
		b.WriteRune(c)
	}
	return b.String()
}

// pseudoBTFID is BPF_PSEUDO_BTF_ID: a 64-bit load of a kernel symbol's address.
const pseudoBTFID = asm.Register(3)
