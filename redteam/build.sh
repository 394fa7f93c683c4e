#!/bin/sh
# Compiles the red-team corpus (attacks/*.c) the way a VM owner compiles a
# guest program. Run by go generate.
set -eu
cd "$(dirname "$0")/attacks"
for src in *.c; do
	clang -O2 -g -Wall -target bpf -I/usr/include/x86_64-linux-gnu -I../../bpf/include \
		-fdebug-compilation-dir=. -c "$src" -o "${src%.c}.o"
	llvm-strip -g "${src%.c}.o"
done
