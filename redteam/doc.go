// Package redteam holds guest programs that attack xdp-hostd's containment
// (attacks/*.c, compiled objects committed) and the tests that run them on
// a real dataplane: each attack is loaded on a VM of a namespace topology,
// frames come from the wire side, and every frame must end where the
// containment rules say (README.md beside this file lists the attacks).
package redteam

//go:generate sh ./build.sh
