#!/bin/sh
# Compiles the guest programs in this folder and in ../examples the way a VM
# owner would:
#   clang -O2 -g -target bpf -I<xdp-hostd>/bpf/include -c prog.c -o prog.o
# DWARF is stripped (BTF stays) and paths are relative, so the objects do not
# depend on where the tree is checked out. Run from bpf/ (go generate does).
set -eu
for dir in "$(dirname "$0")" "$(dirname "$0")/../examples"; do
	(
	cd "$dir"
	for src in *.c; do
		obj="${src%.c}.o"
		clang -O2 -g -Wall -Werror -target bpf -I/usr/include/x86_64-linux-gnu -I../include \
			-fdebug-compilation-dir=. -c "$src" -o "$obj"
		llvm-strip -g "$obj"
	done
	)
done
