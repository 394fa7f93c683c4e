package vmtests

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/vmtests/vmproto"
)

// TestBootReady boots a guest without NICs: the guest program's ready event
// arrives over virtio-serial, and a command round-trips.
func TestBootReady(t *testing.T) {
	vm := StartT(t, WithName("ready"))
	if vm.Ready.Version != vmproto.Version {
		t.Fatalf("guest speaks protocol %d, want %d", vm.Ready.Version, vmproto.Version)
	}
	if len(vm.Ready.Interfaces) != 1 || vm.Ready.Interfaces[0].Name != "lo" {
		t.Errorf("interfaces %+v, want only lo", vm.Ready.Interfaces)
	}
	res, err := Call[vmproto.ExecResult](vm, vmproto.Exec{Argv: []string{"cat", "/proc/cmdline"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest /proc/cmdline: %s", res.Output)
	if _, err := vm.Do(vmproto.Counters{Name: "nosuchnic0"}); err == nil {
		t.Fatal("counters of a missing interface: no error")
	} else {
		t.Logf("expected error: %v", err)
	}
	if err := vm.Poweroff(20 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestVhostUserTestpmd gives the guest a vhost-user NIC served by DPDK
// testpmd in 5tswap mode (each frame goes back with MACs, IPs and ports
// swapped): the guest's UDP datagrams come back to the socket that sent
// them, and testpmd's port counters see them both ways.
func TestVhostUserTestpmd(t *testing.T) {
	for _, tc := range []struct {
		name       string
		queues     int
		cpus       int
		qemuServer bool // QEMU listens, testpmd connects (client=1)
	}{
		{name: "1q", queues: 1, cpus: 1},
		{name: "2q-qemu-server", queues: 2, cpus: 2, qemuServer: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			SkipWithoutQEMU(t)
			SkipWithoutTestpmd(t)
			sock := TempSocketPath(t, "vu0.sock")
			const (
				guestMAC = "52:54:00:12:34:56"
				peerMAC  = "02:00:00:00:00:01"
				n        = 200
				port     = 40000
			)
			pmd := StartTestpmd(t, TestpmdConfig{Socket: sock, Queues: tc.queues, Client: tc.qemuServer})
			vm := StartT(t, WithName("vm"), WithCPUs(tc.cpus),
				WithVhostUserNIC(VhostUserNIC{Socket: sock, MAC: guestMAC, Queues: tc.queues, Server: tc.qemuServer}))

			cfg, err := Call[vmproto.ConfigureResult](vm, vmproto.Configure{
				MAC:       guestMAC,
				Addr:      "10.99.0.2/24",
				Neighbors: []vmproto.Neighbor{{IP: "10.99.0.1", MAC: peerMAC}},
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("guest NIC: %+v", cfg)
			if !cfg.Carrier {
				t.Errorf("guest NIC %s has no carrier", cfg.Name)
			}
			if tc.queues > 1 {
				res, err := Call[vmproto.ExecResult](vm, vmproto.Exec{Argv: []string{"ls", "/sys/class/net/" + cfg.Name + "/queues"}})
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("guest queues: %q", res.Output)
			}
			// 5tswap turns the echo request around as a request from the
			// peer; the guest answers it, and that answer comes back as
			// the reply ping waits for.
			pr, err := Call[vmproto.PingResult](vm, vmproto.Ping{Addr: "10.99.0.1", Count: 3, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("ping through testpmd: %+v", pr)
			if pr.Received == 0 {
				t.Errorf("ping through testpmd: no replies: %+v", pr)
			}
			if _, err := vm.Do(vmproto.UDPListen{Port: port}); err != nil {
				t.Fatal(err)
			}
			marker := fmt.Sprintf("vmtest-%d", os.Getpid())
			sent, err := Call[vmproto.UDPSendResult](vm, vmproto.UDPSend{Dst: "10.99.0.1:9", SrcPort: port, Count: n, Size: 100, Marker: marker, Interval: time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			got, err := Call[vmproto.UDPCountResult](vm, vmproto.UDPCount{Port: port, Marker: marker, Want: n, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			ctr, err := Call[vmproto.CountersResult](vm, vmproto.Counters{MAC: guestMAC})
			if err != nil {
				t.Fatal(err)
			}
			st, err := pmd.Stats()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("guest sent %d, got back %d (%d distinct, %d other); guest NIC %+v; testpmd %+v", sent.Sent, got.Matched, got.Seqs, got.Other, ctr, st)
			if st.RXPackets < uint64(n) || st.TXPackets < uint64(n) {
				t.Errorf("testpmd forwarded rx %d tx %d, want at least %d each way", st.RXPackets, st.TXPackets, n)
			}
			// Both directions go through vrings on TCG; allow a little loss.
			if got.Seqs < n*9/10 {
				t.Errorf("guest got %d of %d datagrams back", got.Seqs, n)
			}
			if ctr.RXPackets < uint64(got.Matched) || ctr.TXPackets < uint64(sent.Sent) || ctr.RXErrors+ctr.TXErrors > 0 {
				t.Errorf("guest NIC counters %+v lower than the datagrams seen", ctr)
			}
		})
	}
}
