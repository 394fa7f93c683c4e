package guestprog

//go:generate sh ./testdata/build.sh
