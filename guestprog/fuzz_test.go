package guestprog

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzCheck feeds the intake arbitrary bytes, seeded with every committed
// object (hostile corpus, shipped guests, examples): whatever comes in gets a
// report or an error, never a panic. Run it longer with
// go test ./guestprog -run '^$' -fuzz FuzzCheck -fuzztime 1m
func FuzzCheck(f *testing.F) {
	for _, pattern := range []string{"testdata/hostile/*.o", "../bpf/guests/*.o", "../bpf/examples/*.o"} {
		paths, _ := filepath.Glob(pattern)
		for _, p := range paths {
			if b, err := os.ReadFile(p); err == nil {
				f.Add(b, "")
			}
		}
	}
	f.Add([]byte("\x7fELF\x02\x01\x01"), "entry")
	f.Fuzz(func(t *testing.T, obj []byte, entry string) {
		r, o, err := Check(obj, entry, Limits{})
		if err != nil {
			if r != nil || o != nil {
				t.Fatalf("error %v with a report", err)
			}
			return
		}
		if r.Accepted != (o != nil) {
			t.Fatalf("accepted %v but object %v", r.Accepted, o)
		}
		if o != nil {
			if _, err := o.Framed(DeliverTap); err != nil && len(r.Violations) == 0 {
				// Framing an accepted object must work.
				t.Fatalf("accepted object cannot be framed: %v", err)
			}
		}
	})
}
