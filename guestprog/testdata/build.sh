#!/bin/sh
# Compiles the policy test corpus (hostile/*.c, each breaking one rule;
# verifier/*.c, passing the policy but not the kernel verifier) the way a VM
# owner would compile a program; no_btf*.c without -g. Run by go generate.
set -eu
cd "$(dirname "$0")/verifier"
for src in *.c; do
	clang -O2 -g -Wall -target bpf -I/usr/include/x86_64-linux-gnu -I../../../bpf/include \
		-fdebug-compilation-dir=. -c "$src" -o "${src%.c}.o"
	llvm-strip -g "${src%.c}.o"
done
cd ../hostile
for src in *.c; do
	obj="${src%.c}.o"
	g=-g
	case "$src" in no_btf*.c) g= ;; esac
	clang -O2 $g -Wall -Wno-unused-function -target bpf -I/usr/include/x86_64-linux-gnu -I../../../bpf/include \
		-fdebug-compilation-dir=. -c "$src" -o "$obj"
	if [ -n "$g" ]; then llvm-strip -g "$obj"; fi
done
