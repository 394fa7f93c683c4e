# xdp-hostd. Run as root on Debian/Ubuntu: `make deps` once, then `make demo`, `make test`.
GO ?= go
PKGS := ./...
DEBS := clang llvm libbpf-dev linux-libc-dev iproute2 ethtool util-linux dpdk-dev qemu-system-x86 cpio ca-certificates libvirt-daemon-system libvirt-clients

.PHONY: all deps build generate check-generate test test-matrix test-short fuzz demo bench vet clean

all: build

deps:
	@if ! command -v $(GO) >/dev/null; then echo "Go is missing: install Go 1.26+ (https://go.dev/dl)"; exit 1; fi
	@missing=$$(for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	$(GO) mod download

build:
	$(GO) build -o bin/xdp-hostd ./cmd/xdp-hostd

# Rebuilds the committed BPF objects and their Go loaders (needs clang).
generate:
	$(GO) generate ./bpf/... ./traffic/... ./guestprog/... ./redteam/...

# Fails if the committed generated files differ from a fresh `make generate`.
check-generate: generate
	@if [ -n "$$(git status --porcelain -- bpf traffic guestprog redteam)" ]; then \
		echo "generated BPF files are stale: run 'make generate' and commit the result"; \
		git status --porcelain -- bpf traffic guestprog redteam; git diff --stat -- bpf traffic guestprog redteam; exit 1; \
	fi

vet:
	$(GO) vet $(PKGS)

# The tests need root: they create network namespaces, veths and taps and load BPF.
# -p 1: packages one at a time; several start QEMU guests or busy-polling testpmd,
# which would starve each other on a two-core machine.
test: build
	XDP_HOSTD_REQUIRE_ROOT_TESTS=1 $(GO) test -p 1 -count=1 -timeout 20m $(PKGS)

# The VM test matrix alone (real QEMU guests; also part of make test).
test-matrix:
	XDP_HOSTD_REQUIRE_ROOT_TESTS=1 XDP_HOSTD_REQUIRE_VM_TESTS=1 $(GO) test -count=1 -timeout 20m -v -run '^TestVMMatrix$$' ./vmtests/

# A short run of every fuzz target (CI runs it); FUZZTIME=1m for longer.
FUZZTIME ?= 20000x
fuzz:
	$(GO) test ./guestprog -run '^$$' -fuzz '^FuzzCheck$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s
	$(GO) test ./traffic -run '^$$' -fuzz '^FuzzParseMarker$$' -fuzztime $(FUZZTIME)
	$(GO) test ./vhost -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME)
	$(GO) test ./vhost -run '^$$' -fuzz '^FuzzPopAvail$$' -fuzztime $(FUZZTIME)
	$(GO) test ./agentproto -run '^$$' -fuzz '^FuzzServe$$' -fuzztime $(FUZZTIME)
	$(GO) test ./agentproto -run '^$$' -fuzz '^FuzzReadFrame$$' -fuzztime $(FUZZTIME)

demo: build
	./bin/xdp-hostd demo

bench: build
	./bin/xdp-hostd bench dispatch

clean:
	rm -rf bin
