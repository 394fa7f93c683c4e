package guestprog

import (
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// RuleCost refuses programs whose worst-case cost per packet is unbounded
// or over the VM's budget.
const RuleCost Rule = "cpu-cost"

// The cost model. A program's worst case per packet is counted in
// instructions: every instruction of every function it can reach once (an
// upper bound on any one path through code without loops), a helper call as
// costHelper instructions, each iteration of a bpf_loop or
// bpf_for_each_map_elem callback as the callback's cost plus costIteration,
// and a tail-call chain as the kernel's limit of tail calls (33) times its
// dearest target when a target can tail-call again, else once. Loops made
// of backward jumps are bounded by the kernel verifier, which walks every
// iteration: for them the load takes the kernel's count of verified
// instructions, when it is larger.
const (
	costHelper    = 10
	costIteration = 10
	costFrame     = 64 // the host's frame and epilogue
	maxTailCalls  = 33 // MAX_TAIL_CALL_CNT
	// maxLoopNesting bounds callbacks inside callbacks.
	maxLoopNesting = 2
	// DefaultMaxCost is the default budget: about 100-300 µs of one CPU
	// per packet in the worst case the model allows.
	DefaultMaxCost = 1 << 18
)

// Cost is the outcome of the cost analysis of one object.
type CostReport struct {
	// Worst is the worst-case cost per packet, in instructions.
	Worst uint64 `json:"worst_case_instructions"`
	// Loops is set when a function has backward jumps: the kernel
	// verifier's count decides their bound at load time.
	Loops bool `json:"backward_jump_loops,omitempty"`
	// Budget is the limit it was compared with.
	Budget uint64 `json:"budget_instructions"`
	chain  uint64 // tail calls per packet at most (0: none)
}

// fnCost is the analysis of one function.
type fnInfo struct {
	name  string
	insns asm.Instructions
	start int // index of the first instruction in the program
}

type costAnalysis struct {
	prog    string
	insns   asm.Instructions
	fns     map[string]fnInfo
	spec    *ebpf.CollectionSpec
	memo    map[string]uint64
	active  map[string]bool
	r       *Report
	loops   bool
	tailing bool // the program calls bpf_tail_call somewhere
}

// programCost computes the worst-case cost of one program of spec, its
// subprograms and callbacks included (tail calls not).
func programCost(spec *ebpf.CollectionSpec, name string, r *Report) (cost uint64, tails, loops bool) {
	p := spec.Programs[name]
	a := &costAnalysis{prog: name, insns: p.Instructions, fns: map[string]fnInfo{}, spec: spec,
		memo: map[string]uint64{}, active: map[string]bool{}, r: r}
	var cur fnInfo
	for i, ins := range p.Instructions {
		if sym := ins.Symbol(); sym != "" {
			if cur.name != "" {
				cur.insns = p.Instructions[cur.start:i]
				a.fns[cur.name] = cur
			}
			cur = fnInfo{name: sym, start: i}
		}
	}
	if cur.name != "" {
		cur.insns = p.Instructions[cur.start:]
		a.fns[cur.name] = cur
	}
	if len(p.Instructions) == 0 || p.Instructions[0].Symbol() == "" {
		return 0, false, false
	}
	c := a.fn(p.Instructions[0].Symbol(), 0)
	return c, a.tailing, a.loops
}

// fn is the cost of one run of function name; depth counts the callbacks
// it runs inside.
func (a *costAnalysis) fn(name string, depth int) uint64 {
	if c, ok := a.memo[fmt.Sprint(name, "/", depth)]; ok {
		return c
	}
	f, ok := a.fns[name]
	if !ok || a.active[name] {
		// The kernel refuses recursion and calls into nothing; the
		// verifier will say so.
		return 0
	}
	a.active[name] = true
	defer delete(a.active, name)

	var cost uint64
	for i, ins := range f.insns {
		cost++
		at := func() string { return where(a.insns, f.start+i, name, f.start) }
		switch {
		case ins.IsFunctionCall():
			cost = satAdd(cost, a.fn(ins.Reference(), depth))
		case ins.IsBuiltinCall():
			cost += costHelper
			switch asm.BuiltinFunc(ins.Constant) {
			case asm.FnTailCall:
				a.tailing = true
			case asm.FnLoop:
				n, ok := constInReg(f.insns, i, asm.R1)
				if !ok {
					a.r.add(Violation{Rule: RuleCost, Program: a.prog, At: at(), Message: "bpf_loop's iteration count must be a constant in the program (loaded into r1 right before the call), so that the host can bound its cost"})
					continue
				}
				cost = satAdd(cost, a.callback(f, i, depth, n, "bpf_loop", at))
			case asm.FnForEachMapElem:
				m, ok := mapInR1(f.insns, i)
				ms := a.spec.Maps[m]
				if !ok || ms == nil {
					a.r.add(Violation{Rule: RuleCost, Program: a.prog, At: at(), Message: "bpf_for_each_map_elem: the map must be named right before the call (r1), so that the host can bound the iterations"})
					continue
				}
				cost = satAdd(cost, a.callback(f, i, depth, uint64(ms.MaxEntries), "bpf_for_each_map_elem over "+m, at))
			}
		case ins.OpCode.Class().IsJump() && ins.OpCode.JumpOp() != asm.Call && ins.OpCode.JumpOp() != asm.Exit:
			if uint8(ins.OpCode)&0xf0 == 0xe0 { // BPF_JCOND: may_goto
				a.r.add(Violation{Rule: RuleCost, Program: a.prog, At: at(), Message: "may_goto loops run up to millions of times; use bpf_loop with a constant count"})
			}
			if jumpBack(ins) {
				a.loops = true
			}
		}
	}
	a.memo[fmt.Sprint(name, "/", depth)] = cost
	return cost
}

// callback is the cost of n runs of the callback whose address is in r2 at
// call i of f.
func (a *costAnalysis) callback(f fnInfo, i, depth int, n uint64, what string, at func() string) uint64 {
	if depth+1 > maxLoopNesting {
		a.r.add(Violation{Rule: RuleCost, Program: a.prog, At: at(), Message: fmt.Sprintf("%s nested %d deep; at most %d levels of loop callbacks are allowed", what, depth+1, maxLoopNesting)})
		return 0
	}
	cb, ok := funcInReg(f.insns, i, asm.R2)
	if !ok {
		a.r.add(Violation{Rule: RuleCost, Program: a.prog, At: at(), Message: what + ": the callback must be named right before the call (r2)"})
		return 0
	}
	return satMul(n, satAdd(a.fn(cb, depth+1), costIteration))
}

// jumpBack reports a jump to an earlier instruction (a loop).
func jumpBack(ins asm.Instruction) bool {
	if ins.OpCode.JumpOp() == asm.Ja && ins.OpCode.Class() == asm.Jump32Class {
		return int32(ins.Constant) < 0 // gotol
	}
	return ins.Offset < 0
}

// regWrite finds the last instruction writing reg in the straight-line code
// before index call.
func regWrite(insns asm.Instructions, call int, reg asm.Register) (asm.Instruction, bool) {
	for j := call - 1; j >= 0; j-- {
		ins := insns[j]
		if ins.Dst == reg && writesDst(ins) {
			return ins, true
		}
		if ins.OpCode.JumpOp() != asm.InvalidJumpOp || ins.Symbol() != "" {
			return asm.Instruction{}, false
		}
	}
	return asm.Instruction{}, false
}

func constInReg(insns asm.Instructions, call int, reg asm.Register) (uint64, bool) {
	ins, ok := regWrite(insns, call, reg)
	if !ok || ins.OpCode.Class() != asm.ALU64Class && ins.OpCode.Class() != asm.ALUClass && !ins.OpCode.IsDWordLoad() {
		return 0, false
	}
	if ins.OpCode.IsDWordLoad() {
		if ins.Src != 0 {
			return 0, false // a map or function address
		}
		return uint64(ins.Constant), true
	}
	if ins.OpCode.ALUOp() != asm.Mov || ins.OpCode.Source() != asm.ImmSource {
		return 0, false
	}
	return uint64(uint32(ins.Constant)), true
}

func funcInReg(insns asm.Instructions, call int, reg asm.Register) (string, bool) {
	ins, ok := regWrite(insns, call, reg)
	if !ok || !ins.IsLoadOfFunctionPointer() {
		return "", false
	}
	return ins.Reference(), ins.Reference() != ""
}

// checkCost computes the object's worst-case cost per packet from its entry
// and compares it with the budget.
func checkCost(spec *ebpf.CollectionSpec, entry string, lim Limits, r *Report) {
	r.Cost.Budget = lim.MaxCost
	entryCost, tails, loops := programCost(spec, entry, r)
	r.Cost.Loops = loops
	worst := satAdd(entryCost, costFrame)
	if tails {
		var dearest uint64
		chain := uint64(1)
		for _, name := range programNames(spec) {
			if name == entry {
				continue
			}
			c, t, l := programCost(spec, name, r)
			dearest = max(dearest, c)
			r.Cost.Loops = r.Cost.Loops || l
			if t {
				chain = maxTailCalls
			}
		}
		worst = satAdd(worst, satMul(chain, dearest))
		r.Cost.chain = chain
	}
	r.Cost.Worst = worst
	if worst > lim.MaxCost {
		r.add(Violation{Rule: RuleCost, Message: fmt.Sprintf("worst-case cost %s instructions per packet is over the VM's budget of %d (loop counts times callback size, tail-call chains); lower the loop counts or map sizes", costString(worst), lim.MaxCost)})
	}
}

func costString(c uint64) string {
	if c == ^uint64(0) {
		return "more than 2^64"
	}
	return fmt.Sprint(c)
}

// checkLoadedCost compares the kernel's count of verified instructions of
// the loaded programs with the budget: for loops of backward jumps it is
// the bound the static model lacks.
func checkLoadedCost(o *Object, progs map[string]*ebpf.Program) error {
	if o.cost.Budget == 0 {
		return nil
	}
	var verified, entry, dearest uint64
	for name, p := range progs {
		info, err := p.Info()
		if err != nil {
			continue
		}
		n, ok := info.VerifiedInstructions()
		if !ok {
			continue
		}
		if name == o.Entry {
			entry = uint64(n)
		} else {
			dearest = max(dearest, uint64(n))
		}
	}
	verified = entry
	if o.cost.chain > 0 {
		verified = satAdd(verified, satMul(o.cost.chain, dearest))
	}
	worst := max(o.cost.Worst, verified)
	if worst > o.cost.Budget {
		var b strings.Builder
		fmt.Fprintf(&b, "worst-case cost %d instructions per packet (the kernel verified %d) is over the VM's budget of %d", worst, verified, o.cost.Budget)
		return &RefusedError{Report: &Report{Entry: o.Entry, Violations: []Violation{{Rule: RuleCost, Program: o.Entry, Message: b.String()}}}}
	}
	return nil
}
