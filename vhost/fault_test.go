package vhost

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/xdp-hostd/xdp-hostd/hostnet/testnet"
)

// A front-end that shrinks the file behind its guest memory after
// SET_MEM_TABLE makes the back-end's next touch of it fault (SIGBUS). That
// used to kill the process, every VM's back-end with it. These tests shrink
// the memory under each path that touches it and check that only that
// connection ends: the queue is broken and counted, the connection closed,
// another device keeps working and the server takes the next front-end.
// On the old code the test binary dies ("fatal error: fault").

func bufferLogger() (*slog.Logger, *testnet.SyncBuffer) {
	lb := &testnet.SyncBuffer{}
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

// fileBacking: a plain file in a temporary directory (no seals possible).
func fileBacking(dir string) backing {
	return func(tb testing.TB, i int, size int64) int {
		tb.Helper()
		fd, err := unix.Open(filepath.Join(dir, fmt.Sprintf("guest%d", i)), unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
		if err != nil {
			tb.Fatalf("open guest memory file: %v", err)
		}
		if err := unix.Ftruncate(fd, size); err != nil {
			tb.Fatalf("ftruncate: %v", err)
		}
		return fd
	}
}

// sealedMemfd: a memfd made with MFD_ALLOW_SEALING, sized, then sealed with
// seals (0: none).
func sealedMemfd(seals int) backing {
	return func(tb testing.TB, i int, size int64) int {
		tb.Helper()
		fd, err := unix.MemfdCreate(fmt.Sprintf("sealed%d", i), unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			tb.Fatalf("memfd_create: %v", err)
		}
		if err := unix.Ftruncate(fd, size); err != nil {
			tb.Fatalf("ftruncate: %v", err)
		}
		if seals != 0 {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
				tb.Fatalf("F_ADD_SEALS: %v", err)
			}
		}
		return fd
	}
}

// farBuf returns the guest-physical address of the last page of region 0,
// which lies beyond the first MiB of its file.
func (f *frontend) farBuf() uint64 {
	r := f.g.regions[0]
	if r.MmapOffset+r.Size-4096 < 1<<20 {
		f.t.Fatalf("test bug: guest memory of %#x bytes ends within the first MiB of its file", r.Size)
	}
	return r.GuestPhysAddr + r.Size - 4096
}

// shrink truncates the file of region 0 to size bytes, as a hostile
// front-end would. The test must not touch guest memory beyond it after.
func (f *frontend) shrink(size int64) {
	f.t.Helper()
	if err := unix.Ftruncate(f.g.regions[0].fd, size); err != nil {
		f.t.Fatalf("ftruncate guest memory to %d: %v", size, err)
	}
}

// checkFaulted checks the aftermath of a fault on queue q of ts's current
// front-end f: counted (broken: the queue's total over the connections), error eventfd written, pair not ready,
// connection closed, logged.
func checkFaulted(t *testing.T, ts *testServer, f *frontend, q int, broken uint64, logs *testnet.SyncBuffer) {
	t.Helper()
	waitFor(t, fmt.Sprintf("queue %d reported broken %d times", q, broken), func() bool { return ts.dev.Stats()[q].Broken == broken })
	if v := readEvent(f.errfd[q]); v == 0 {
		t.Errorf("queue %d: error eventfd not written", q)
	}
	f.expectClosed()
	if ts.dev.Ready(0) {
		t.Error("pair 0 ready after a guest memory fault")
	}
	waitFor(t, "fault logged", func() bool { return strings.Contains(logs.String(), "guest memory fault") })
	waitFor(t, "server to drop the connection", func() bool { return !ts.srv.Connected() })
}

// checkWorks checks that front-end f of ts moves a frame each way.
func checkWorks(t *testing.T, what string, ts *testServer, f *frontend, sink *txSink, seed byte) {
	t.Helper()
	f.postRX(0, 1, 2048)
	want := frame(100, seed)
	if n, err := ts.dev.Deliver(0, [][]byte{want}); n != 1 || err != nil {
		t.Fatalf("%s: Deliver: %d, %v", what, n, err)
	}
	if got := f.receive(0); len(got) != 1 || !bytes.Equal(got[0], want) {
		t.Fatalf("%s: received %d frames", what, len(got))
	}
	f.transmit(1, 1, frame(80, seed+1))
	b := sink.collect(t, 1)
	if !bytes.Equal(b[0].frames[0], frame(80, seed+1)) {
		t.Fatalf("%s: TX frame differs", what)
	}
}

func TestGuestMemoryShrinkFault(t *testing.T) {
	for _, tc := range []struct {
		name string
		mem  func(t *testing.T) backing
	}{
		{"memfd-unsealed", func(*testing.T) backing { return memfdBacking }},
		{"plain-file", func(t *testing.T) backing { return fileBacking(t.TempDir()) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Another VM's device, with its own front-end, throughout.
			otherSink := newTXSink()
			other := startServer(t, NetConfig{TX: otherSink.handler})
			of := dial(t, other.path)
			of.setup(setupOpts{})
			checkWorks(t, "other device before", other, of, otherSink, 1)

			log, logs := bufferLogger()
			sink := newTXSink()
			ts := startServer(t, NetConfig{TX: sink.handler, Logger: log})
			const size = 64 // rings and buffers well inside the first MiB
			for i, r := range []struct {
				name     string
				features uint64
				// fault makes front-end f fault the device and returns
				// the queue that faulted.
				fault func(t *testing.T, f *frontend) int
			}{{
				// RX: Offer (as a receive thread calls it) into a buffer
				// beyond the new end of the file.
				name: "rx-offer",
				fault: func(t *testing.T, f *frontend) int {
					f.rings[0].setDesc(5, f.farBuf(), 2048, descFWrite, 0)
					f.rings[0].offer(5)
					f.shrink(1 << 20)
					placed, consumed, err := ts.dev.Offer(0, [][]byte{frame(100, 2)})
					if !errors.Is(err, ErrQueueBroken) || placed != 0 || consumed != 0 {
						t.Fatalf("Offer into shrunk memory: placed %d consumed %d, %v; want an error wrapping ErrQueueBroken", placed, consumed, err)
					}
					t.Logf("Offer: %v", err)
					return 0
				},
			}, {
				// TX: a kick for a frame beyond the end; the TX handler
				// reads it on the kick goroutine.
				name: "tx-frame",
				fault: func(t *testing.T, f *frontend) int {
					far := f.farBuf()
					pkt := append(make([]byte, f.hdr), frame(200, 3)...)
					copy(f.g.at(far, uint64(len(pkt))), pkt)
					f.rings[1].setDesc(7, far, uint32(len(pkt)), 0, 0)
					f.shrink(1 << 20)
					f.rings[1].offer(7)
					unix.Write(f.kick[1], eventOne[:])
					return 1
				},
			}, {
				// The rings themselves: the whole file gone, without
				// EVENT_IDX so that the kick's first touch is the
				// used-ring store (vhost.storeUsed, as reported).
				name:     "tx-ring",
				features: FeatureVersion1 | FeatureNetMrgRxbuf | FeatureProtocolFeatures,
				fault: func(t *testing.T, f *frontend) int {
					f.shrink(0)
					unix.Write(f.kick[1], eventOne[:])
					return 1
				},
			}, {
				// Starting a ring whose memory is gone: SET_VRING_KICK
				// reads the used ring on the connection's goroutine.
				name: "ring-start",
				fault: func(t *testing.T, f *frontend) int {
					f.do(ReqGetVringBase, state(1, 0))
					f.shrink(0)
					if err := f.send(ReqSetVringKick, FlagVersion|FlagNeedReply, u64(1), f.kick[1]); err != nil {
						t.Fatal(err)
					}
					return 1
				},
			}} {
				t.Run(r.name, func(t *testing.T) {
					f := dial(t, ts.path)
					f.setup(setupOpts{size: size, mem: tc.mem(t), features: r.features})
					checkWorks(t, "before the fault", ts, f, sink, byte(10*i))
					if !strings.Contains(logs.String(), "can shrink guest memory") {
						t.Error("a shrinkable memory region was not logged")
					}
					before := ts.dev.Stats()
					closed := strings.Count(logs.String(), "front-end connection closed after a guest memory fault")
					q := r.fault(t, f)
					checkFaulted(t, ts, f, q, before[q].Broken+1, logs)
					if n := strings.Count(logs.String(), "front-end connection closed after a guest memory fault"); n != closed+1 {
						t.Errorf("%d connections closed after a fault, want %d", n, closed+1)
					}
					if _, err := ts.dev.Deliver(0, [][]byte{frame(100, 2)}); !errors.Is(err, ErrNotReady) {
						t.Errorf("Deliver after the fault: %v, want ErrNotReady", err)
					}
					// The other VM's device never noticed.
					checkWorks(t, "other device after the fault", other, of, otherSink, byte(10*i+5))
				})
			}

			// The server serves the next front-end as if nothing happened.
			f := dial(t, ts.path)
			f.setup(setupOpts{})
			checkWorks(t, "front-end after the faults", ts, f, sink, 60)
			checkWorks(t, "other device at the end", other, of, otherSink, 70)
			if st := other.dev.Stats(); st[0].Broken != 0 || st[1].Broken != 0 {
				t.Errorf("other device's queues broken: %+v", st)
			}
			if testing.Verbose() {
				for _, l := range strings.Split(logs.String(), "\n") {
					if strings.Contains(l, "level=ERROR") || strings.Contains(l, "level=WARN") {
						t.Log(l)
					}
				}
			}
		})
	}
}

// A memfd that allows sealing gets F_SEAL_SHRINK from the back-end: the
// front-end can no longer shrink it, and a QEMU-style sealed memfd is
// taken as it is; neither is warned about.
func TestGuestMemorySealing(t *testing.T) {
	for _, tc := range []struct {
		name      string
		seals     int
		wantSeals int
	}{
		{"allow-sealing", 0, unix.F_SEAL_SHRINK},
		{"qemu-sealed", unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL, unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log, logs := bufferLogger()
			sink := newTXSink()
			ts := startServer(t, NetConfig{TX: sink.handler, Logger: log})
			f := dial(t, ts.path)
			f.setup(setupOpts{size: 64, mem: sealedMemfd(tc.seals)})
			got, err := unix.FcntlInt(uintptr(f.g.regions[0].fd), unix.F_GET_SEALS, 0)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.wantSeals {
				t.Errorf("seals %#x, want %#x", got, tc.wantSeals)
			}
			if err := unix.Ftruncate(f.g.regions[0].fd, 1<<20); !errors.Is(err, unix.EPERM) {
				t.Errorf("front-end shrank a sealed memfd: %v", err)
			}
			checkWorks(t, "sealed memory", ts, f, sink, 1)
			if strings.Contains(logs.String(), "can shrink guest memory") {
				t.Errorf("a sealed region was warned about:\n%s", logs)
			}
			if added := strings.Contains(logs.String(), "sealed a guest memory region against shrinking"); added != (tc.seals == 0) {
				t.Errorf("back-end sealing logged: %v, want %v", added, tc.seals == 0)
			}
		})
	}
}

// A region that does not fit in its file (mmap_offset+size beyond the end)
// is refused at SET_MEM_TABLE, with an error naming the region, its end and
// the file's size; the connection and its rings survive.
func TestServerMemTableShortFile(t *testing.T) {
	log, logs := bufferLogger()
	ts := startServer(t, NetConfig{Logger: log})
	f := dial(t, ts.path)
	f.setup(setupOpts{})
	g := newGuestMem(t, 64<<10) // file: 4096 + 64 KiB
	for _, tc := range []struct {
		name string
		edit func(r *MemoryRegion)
		want string
	}{
		{"size", func(r *MemoryRegion) { r.Size = 1 << 20 }, "ends at 0x101000 (mmap_offset+size), beyond the end of its file (0x11000 bytes)"},
		{"offset", func(r *MemoryRegion) { r.MmapOffset = 8192 }, "ends at 0x12000 (mmap_offset+size), beyond the end of its file (0x11000 bytes)"},
	} {
		regions := g.layout()
		tc.edit(&regions[0])
		memfds := g.dupFDs(t)
		v := f.do(ReqSetMemTable, memTablePayload(regions), memfds...)
		closeFDs(memfds)
		if v == 0 {
			t.Errorf("%s: memory table beyond the end of its file acked", tc.name)
		}
		if !strings.Contains(logs.String(), tc.want) {
			t.Errorf("%s: log does not say %q:\n%s", tc.name, tc.want, logs)
		}
	}
	f.postRX(0, 1, 2048)
	if n, _ := ts.dev.Deliver(0, [][]byte{frame(64, 1)}); n != 1 {
		t.Error("device stopped working after the refused memory tables")
	}
}
