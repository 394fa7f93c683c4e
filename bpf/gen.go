// Package bpf holds xdp-hostd's BPF programs and their generated loaders.
//
// The C sources sit beside this file; `make generate` (go generate) rebuilds
// the committed *_bpfel.go/*.o files with clang, so `go build` needs no clang.
//
//   - dispatch.c: the root XDP program of an uplink (queue or MAC -> VM slot,
//     tail call into the VM's program).
//   - vmprog.c: the host frame around every VM program: the guest entry is
//     called as a subprogram and its verdict goes through the host epilogue.
//   - vmtx.c: the XDP program on VM taps (guest -> uplink, anti-spoof).
//   - flood.c: tc ingress on the uplink: broadcasts and multicasts from
//     shared queues cloned into every tap VM's tap.
//   - include/xdp_hostd.h: the guest ABI header.
//   - guests/*.c: guest programs shipped with the host (the built-in program)
//     and used by tests, compiled as a VM owner would compile them.
package bpf

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -go-package bpf Dispatch dispatch.c -- -I.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -go-package bpf -type hostd_verdict -type hostd_run_cost -type hostd_vm_cfg Vmprog vmprog.c -- -I.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -go-package bpf Vmtx vmtx.c -- -I.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -go-package bpf Flood flood.c -- -I.
//go:generate sh ./guests/build.sh
