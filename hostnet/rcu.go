package hostnet

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// WaitForPrograms returns once every BPF program that was running on any
// CPU when it was called has finished. After a program is taken out of a
// program array, a CPU may still be running it (an XDP program runs under
// RCU, and the array update does not wait); this waits for that.
//
// The kernel offers no such call by itself, but an update of a
// map-in-map element waits for an RCU grace period before it returns, so
// that the caller knows no (non-sleepable) program still sees the old
// inner map (maybe_wait_bpf_programs in kernel/bpf/syscall.c). XDP
// programs are non-sleepable: one such update on a scratch map-in-map is
// the wait.
func WaitForPrograms() error {
	inner := &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}
	outer, err := ebpf.NewMap(&ebpf.MapSpec{Name: "hostd_rcu", Type: ebpf.ArrayOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: 1, InnerMap: inner})
	if err != nil {
		return fmt.Errorf("wait for running programs: %w", err)
	}
	defer outer.Close()
	m, err := ebpf.NewMap(inner)
	if err != nil {
		return fmt.Errorf("wait for running programs: %w", err)
	}
	defer m.Close()
	if err := outer.Put(uint32(0), m); err != nil {
		return fmt.Errorf("wait for running programs: %w", err)
	}
	return nil
}
