package writer

import (
	"fmt"
	"testing"
)

// TestAtomicOneKeyChangeInAWideFlatTreeCostsLittle counts the entries a one-key change
// creates among 10000 top-level keys: the top level is bucketed, so a change makes the few
// objects on the key's bucket path, not a root of 10000 names.
func TestAtomicOneKeyChangeInAWideFlatTreeCostsLittle(t *testing.T) {
	w, _ := open(t, Atomic)
	w.opts.NoSync = true
	mustApply(t, w, flatBatch(10000, 16))
	entries := 0
	w.step = func(step string) {
		if step == "staging" {
			entries++
		}
	}
	mustApply(t, w, batch(2, put("k00007", "changed")))
	if entries > 100 {
		t.Errorf("a one-key change among 10000 flat keys created %d entries, want at most 100", entries)
	}
	w.step = nil
	mustApply(t, w, batch(3, put("k10000", "new"), del("k00008")))
	got := visible(t, w.absDir)
	if len(got) != 10000 || got["k00007"] != "changed" || got["k10000"] != "new" || got["k00009"] != fmt.Sprint("vvvvvvvvvvvvvvvv") {
		t.Errorf("after the changes: %d keys, k00007=%q k10000=%q", len(got), got["k00007"], got["k10000"])
	}
}
