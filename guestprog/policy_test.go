package guestprog

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	hostbpf "github.com/xdp-hostd/xdp-hostd/bpf"
)

func hostile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "hostile", name+".o"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Every program of the hostile corpus breaks one rule, and the report names
// that rule (and, for instructions, where).
func TestPolicyHostileCorpus(t *testing.T) {
	for _, tc := range []struct {
		file string
		rule Rule
		says string
	}{
		{"redirect_ifindex", RuleRedirectIfidx, "xdp_hostd_redirect_port"},
		{"redirect_map_v1", RuleRedirectHelper, "bpf_redirect_map"},
		{"redirect_map_v1", RuleABIVersion, "rebuild against xdp_hostd.h version 2"},
		{"own_devmap", RuleRedirectTarget, "my_ports"},
		{"fib_lookup", RuleHostState, "bpf_fib_lookup"},
		{"trace_printk", RuleHostOutput, "trace"},
		{"probe_read", RuleKernelMemory, "kernel memory"},
		{"ringbuf", RuleHostOutput, "ring"},
		{"ringbuf", RuleMapType, "events"},
		{"map_in_map", RuleMapInMap, "outer"},
		{"pinned", RulePinnedMap, "shared"},
		{"big_map", RuleMemoryQuota, "quota"},
		{"tc_prog", RuleProgramType, "SchedCLS"},
		{"devmap_prog", RuleProgramType, "xdp/devmap"},
		{"two_entries", RuleEntry, "one, two"},
		{"reserved_name", RuleReservedName, "hostd_counters"},
		{"frags", RuleFrags, "xdp.frags"},
		{"kfunc", RuleKernelMemory, "kfunc"},
		{"tailcall_entry", RuleTailCall, "again"},
		{"helper_unlisted", RuleHelper, "bpf_get_hash_recalc"},
		{"no_btf", RuleBTF, "-g"},
		{"no_btf_maps", RuleBTF, "-g"},
		{"kconfig", RuleHostState, "extern LINUX_KERNEL_VERSION is __kconfig"},
		{"kconfig", RuleHostState, "extern CONFIG_BPF_JIT_ALWAYS_ON is __kconfig"},
		{"many_programs", RuleProgramLimit, "81 programs; the limit is 64"},
		{"percpu_bytes", RuleMemoryQuota, "quota is 16 MiB"},
		{"hash_bytes", RuleMemoryQuota, "quota is 16 MiB"},
		{"bloom_big", RuleMemoryQuota, "quota is 16 MiB"},
	} {
		t.Run(tc.file+"/"+string(tc.rule), func(t *testing.T) {
			r, obj, err := Check(hostile(t, tc.file), "", Limits{})
			if err != nil {
				t.Fatalf("unusable input: %v", err)
			}
			if r.Accepted || obj != nil {
				t.Fatalf("accepted: %+v", r)
			}
			var found bool
			for _, v := range r.Violations {
				if v.Rule == tc.rule && strings.Contains(v.String(), tc.says) {
					found = true
				}
			}
			if !found {
				t.Errorf("no [%s] violation mentioning %q in:\n%s", tc.rule, tc.says, (&RefusedError{r}).Error())
			}
			if _, err := Parse(hostile(t, tc.file), ""); !errors.Is(err, ErrRefused) {
				t.Errorf("Parse: %v, want ErrRefused", err)
			}
		})
	}
}

// Violations at an instruction say where, with the source line.
func TestPolicyNamesInstruction(t *testing.T) {
	r, _, err := Check(hostile(t, "redirect_ifindex"), "", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	v := r.Violations[0]
	if !strings.HasPrefix(v.At, "prog+") || !strings.Contains(v.At, "bpf_redirect(2, 0)") {
		t.Errorf("location %q does not name the function, offset and source line", v.At)
	}
}

func TestPolicyInstructionLimit(t *testing.T) {
	r, _, err := Check(guest(t, "port"), "", Limits{MaxInstructions: 10})
	if err != nil {
		t.Fatal(err)
	}
	if r.Accepted || r.Violations[0].Rule != RuleInsnLimit {
		t.Errorf("report %+v", r)
	}
}

// Every shipped guest program passes the policy.
func TestPolicyAcceptsShippedGuests(t *testing.T) {
	for _, name := range []string{"pass", "tx", "port", "tailcall", "counter"} {
		r, obj, err := Check(guest(t, name), "", Limits{})
		if err != nil || !r.Accepted || obj == nil {
			t.Errorf("%s: %v %+v", name, err, r)
		}
	}
	_ = hostbpf.Guest
}

func TestPolicyUnusableInput(t *testing.T) {
	for _, in := range [][]byte{nil, []byte("\x7fELF"), []byte("not an object at all")} {
		if _, _, err := Check(in, "", Limits{}); !errors.Is(err, ErrInvalidObject) {
			t.Errorf("%q: %v", in, err)
		}
	}
}
