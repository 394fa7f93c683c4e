package vmtests

import (
	"strings"
	"testing"
	"time"

	"github.com/xdp-hostd/xdp-hostd/vmtests/image"
	"github.com/xdp-hostd/xdp-hostd/vmtests/vmproto"
)

func TestShellQuote(t *testing.T) {
	got := shellQuote([]string{"qemu", "-append", "console=ttyS0 quiet", "it's", ""})
	want := `qemu -append 'console=ttyS0 quiet' 'it'\''s' ''`
	if got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

func TestQEMUArgsNIC(t *testing.T) {
	vm := &VM{}
	args, err := vm.qemuArgs(config{name: "x", memMB: 128, cpus: 2, shared: true, accel: "tcg",
		nics: []VhostUserNIC{{Socket: "/s0"}, {Socket: "/s1", Queues: 4, Server: true, MAC: "02:00:00:00:00:09"}}},
		&imageStub, "/agent")
	if err != nil {
		t.Fatal(err)
	}
	line := shellQuote(args)
	for _, want := range []string{
		"-object memory-backend-memfd,id=mem,size=128M,share=on -numa node,memdev=mem",
		"-chardev socket,id=vu0,path=/s0,reconnect=1 -netdev vhost-user,id=n0,chardev=vu0,queues=1 -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,vectors=0 ",
		"-chardev socket,id=vu1,path=/s1,server=on,wait=off -netdev vhost-user,id=n1,chardev=vu1,queues=4 -device virtio-net-pci,netdev=n1,mac=02:00:00:00:00:09,vectors=0,mq=on",
		"name=" + vmproto.PortName,
	} {
		if !strings.Contains(line, want) {
			t.Errorf("command line lacks %q:\n%s", want, line)
		}
	}
	if len(vm.NICs) != 2 || vm.NICs[0].Queues != 1 || vm.NICs[0].MAC == "" {
		t.Errorf("NIC defaults not filled: %+v", vm.NICs)
	}
	if _, err := (&VM{}).qemuArgs(config{nics: []VhostUserNIC{{}}}, &imageStub, "/a"); err == nil {
		t.Error("NIC without socket accepted")
	}
}

// The migratable TCG memory (WithMigratableTCGMemory) is not a multiple of
// 64 pages, in -m and in the memory backend alike.
func TestQEMUArgsMigratableMemory(t *testing.T) {
	cfg := config{name: "x", memMB: 256, cpus: 1, shared: true, accel: "tcg"}
	WithMigratableTCGMemory()(&cfg)
	args, err := (&VM{}).qemuArgs(cfg, &imageStub, "/agent")
	if err != nil {
		t.Fatal(err)
	}
	line := shellQuote(args)
	for _, want := range []string{" -m 262152K ", "memory-backend-memfd,id=mem,size=262152K,share=on"} {
		if !strings.Contains(line, want) {
			t.Errorf("command line lacks %q:\n%s", want, line)
		}
	}
	if kib := 256*1024 + 8; (kib/4)%64 == 0 {
		t.Errorf("%d KiB is a multiple of 64 pages", kib)
	}
}

func TestBudgets(t *testing.T) {
	if b := (vmproto.UDPCount{Timeout: 30 * time.Second}).Budget(); b <= 30*time.Second {
		t.Errorf("UDPCount budget %v does not cover its timeout", b)
	}
}

var imageStub = image.Image{Kernel: "/vmlinuz", Initramfs: "/initrd"}

func TestJSONHasValue(t *testing.T) {
	for doc, want := range map[string]bool{
		`{"delivery_modes": ["copy", "zerocopy"]}`:                        true,
		`{"vm": {"mode": "zerocopy"}}`:                                    true,
		`{"mode": "copy", "reason": "zerocopy: the uplink cannot do it"}`: false,
		`{"zerocopy": true}`:                                              true,
		`{"zerocopy": false}`:                                             false,
		`not json`:                                                        false,
	} {
		if got := jsonHasValue(doc, "zerocopy"); got != want {
			t.Errorf("jsonHasValue(%s) = %v, want %v", doc, got, want)
		}
	}
}
