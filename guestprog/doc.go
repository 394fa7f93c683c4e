// Package guestprog takes guest XDP programs from ELF bytes to loaded kernel
// programs that run inside the host's frame.
//
// Every VM program, the built-in one included, is loaded the same way: Parse
// finds the entry program, Framed makes the host frame (bpf/vmprog.c) call
// the entry function as a subprogram and hand its verdict to the host
// epilogue, and Load binds the VM's host-owned maps (counters, delivery
// targets, port table) and loads the result.
package guestprog
