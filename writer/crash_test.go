package writer

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestCrashAtEveryStepConverges copies the target at every step of Apply (what a kill -9
// there would leave), then checks on each copy that readers see a whole old or new tree, and
// that Open plus a Full batch converge to the new tree and clean every leftover.
func TestCrashAtEveryStepConverges(t *testing.T) {
	old := tree{"a": "A1", "sub/b": "B1", "gone": "G", "dir/x": "X", "sub/deep/y": "Y", "keep/deep/k": "K"}
	next := tree{"a": "A2", "sub/b": "B1", "new/c": "C", "sub/n": "N", "dir": "a file now", "keep/deep/k": "K"}
	// With the writer's thresholds lowered to 8 and 6 top-level names, wide has a bucketed
	// top level, and old and next flat ones: going from one to the other switches forms.
	wide := tree{"a": "A3", "sub/b": "B1", "keep/deep/k": "K", "dir/x": "X2"}
	for i := range 10 {
		wide[fmt.Sprintf("f%d", i)] = fmt.Sprint("F", i)
	}
	for _, layout := range layouts {
		for _, tc := range []struct {
			name       string
			before     tree
			after      tree
			firstBatch bool
			streamed   bool // the new tree comes as a streamed full batch, in pages
			small      bool // thresholds of 8 and 6 top-level names for the bucketed form
		}{
			{"first sync", nil, old, true, false, false},
			{"update", old, next, false, false, false},
			{"streamed first sync", nil, old, true, true, false},
			{"streamed update", old, next, false, true, false},
			// New top-level names: the stream links them while it arrives, dangling until the swap.
			{"streamed update with new names", old, withNewNames(next), false, true, false},
			{"bucketed first sync", nil, wide, true, false, true},
			{"switch to bucketed", old, wide, false, false, true},
			{"switch to flat", wide, next, false, false, true},
			{"streamed switch to bucketed", old, wide, false, true, true},
			// Staged bucketed from its first value: no switch (checked below).
			{"streamed bucketed first sync", nil, wide, true, true, true},
			{"streamed switch to flat", wide, next, false, true, true},
		} {
			t.Run(layout.String()+"/"+tc.name, func(t *testing.T) {
				w, dir := open(t, layout)
				above, below := bucketAbove, flatBelow
				if tc.small {
					above, below = 8, 6
				}
				w.bucketAbove, w.flatBelow = above, below
				if !tc.firstBatch {
					mustApply(t, w, full(1, tc.before))
					w.waitPrune() // the target holds still while the steps copy it
				}
				crashes := t.TempDir()
				var steps []string
				w.step = func(step string) {
					snap := filepath.Join(crashes, fmt.Sprintf("%02d-%s", len(steps), step))
					copyTree(t, dir, snap)
					steps = append(steps, snap)
				}
				if tc.streamed {
					mustStream(t, w, full(2, tc.after), 2)
				} else {
					mustApply(t, w, full(2, tc.after))
				}
				if len(steps) < 4 {
					t.Fatalf("only %d steps seen", len(steps))
				}
				if layout == Atomic {
					switched := slices.ContainsFunc(steps, func(s string) bool { return strings.HasSuffix(s, "-switch-relinked") })
					if wantSwitch := tc.small && !tc.firstBatch; switched != wantSwitch {
						t.Errorf("switched forms: %v, want %v", switched, wantSwitch)
					}
					if wantBucketed := tc.small && len(tc.after) > 8; w.bucketed != wantBucketed {
						t.Errorf("bucketed: %v, want %v", w.bucketed, wantBucketed)
					}
				}
				for _, snap := range steps {
					t.Run(filepath.Base(snap), func(t *testing.T) {
						checkCrashState(t, layout, snap, tc.before, tc.after)
						if tc.streamed && layout == Atomic && !tc.firstBatch {
							// A restart may find the old tree in etcd again: the links
							// the stream made for new names must not outlive it. (The
							// Plain layout does not converge back from a crash halfway
							// through its writes: a key that became a file stays one.)
							back := filepath.Join(t.TempDir(), "back")
							copyTree(t, snap, back)
							checkRecovery(t, layout, back, tc.before, above, below)
						}
						checkRecovery(t, layout, snap, tc.after, above, below)
					})
				}
			})
		}
	}
}

func withNewNames(t tree) tree {
	n := tree{"fresh": "F", "zz": "Z"}
	for k, v := range t {
		n[k] = v
	}
	return n
}

// checkCrashState checks what a reader sees in a target left by a crash.
func checkCrashState(t *testing.T, layout Layout, dir string, before, after tree) {
	if layout == Atomic {
		if _, err := os.Lstat(filepath.Join(dir, "..data")); os.IsNotExist(err) {
			if len(before) != 0 {
				t.Fatal("..data is missing")
			}
			return
		}
		_, data := dataTree(t, dir)
		if !equalTrees(data, before) && !equalTrees(data, after) {
			t.Errorf("..data shows a mix: %q", data)
		}
		// Every key of the live version is reachable by its path, without a restart.
		for p, v := range data {
			got, err := os.ReadFile(filepath.Join(dir, p))
			if err != nil || string(got) != v {
				t.Errorf("live key %s is not reachable by its path: %q, %v", p, got, err)
			}
		}
		return
	}
	// Plain: each file is whole, old or new.
	for p, v := range visible(t, dir) {
		if v != before[p] && v != after[p] {
			t.Errorf("%s = %q, neither old nor new", p, v)
		}
	}
}

// checkRecovery opens the crashed target and applies the Full batch a restart would.
func checkRecovery(t *testing.T, layout Layout, dir string, want tree, above, below int) {
	w := openAt(t, Options{Dir: dir, Layout: layout, UID: -1, GID: -1})
	w.bucketAbove, w.flatBelow = above, below
	mustApply(t, w, full(3, want))
	assertTree(t, "after recovery", visible(t, dir), want)
	assertFiles(t, w, want)
	if layout == Atomic {
		_, data := dataTree(t, dir)
		assertTree(t, "..data after recovery", data, want)
	}
	w.waitPrune() // the version before the previous one goes in the background
	kept := map[string]bool{}
	if layout == Atomic {
		kept = reachable(t, dir)
	}
	for _, obj := range w.retired {
		kept[obj] = true
	}
	for _, n := range names(t, dir) {
		switch {
		case versionName.MatchString(n):
			if !kept[n] {
				t.Errorf("directory object %s is neither live nor the previous version's", n)
			}
		case n == "..data" || n == manifestName || n == lockName:
		case strings.HasPrefix(n, ".."):
			t.Errorf("leftover %s", n)
		}
	}
	filepath.WalkDir(dir, func(name string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		if ns := names(t, name); len(ns) == 0 {
			t.Errorf("empty directory %s left", name)
		}
		return nil
	})
	if res := mustApply(t, w, full(4, want)); res.Changed {
		t.Errorf("a second Full batch changed something: %+v", res)
	}
}

// reachable returns the directory objects the live version reaches from ..data.
func reachable(t *testing.T, dir string) map[string]bool {
	t.Helper()
	seen := map[string]bool{}
	var walk func(obj string)
	walk = func(obj string) {
		seen[obj] = true
		for _, n := range names(t, filepath.Join(dir, obj)) {
			if target, err := os.Readlink(filepath.Join(dir, obj, n)); err == nil {
				walk(strings.TrimPrefix(target, "../"))
			}
		}
	}
	root, err := os.Readlink(filepath.Join(dir, "..data"))
	if err != nil {
		t.Fatal(err)
	}
	walk(root)
	return seen
}

// TestCrashWhileRecyclingConverges is TestCrashAtEveryStepConverges for a change that reuses
// spare objects (recycle.go): a kill -9 while a spare is renamed and edited leaves the live
// version whole, and Open plus a Full batch converge.
func TestCrashWhileRecyclingConverges(t *testing.T) {
	before := tree{"a": "A1", "sub/b": "B1", "sub/c": "C1", "sub/deep/y": "Y", "keep/k": "K"}
	for i := range 10 {
		before[fmt.Sprintf("f%d", i)] = fmt.Sprint("F", i)
	}
	for _, small := range []bool{false, true} {
		t.Run(fmt.Sprintf("bucketed=%v", small), func(t *testing.T) {
			w, dir := open(t, Atomic)
			above, below := bucketAbove, flatBelow
			if small {
				above, below = 8, 6
			}
			w.bucketAbove, w.flatBelow = above, below
			mustApply(t, w, full(1, before))
			// Changes in sub and at the top give both directories a spare.
			for rev, v := range []string{"B2", "B3", "B1"} {
				mustApply(t, w, batch(int64(rev+2), put("sub/b", v), put("f1", v)))
				w.Tidy()
			}
			if len(w.recycle.spares) == 0 {
				t.Fatal("no spare to reuse")
			}
			live := tree{}
			for k, v := range before {
				live[k] = v
			}
			live["f1"] = "B1"
			after := tree{}
			for k, v := range live {
				after[k] = v
			}
			after["a"], after["sub/b"], after["new/n"], after["f2"] = "A2", "B4", "N", "F2b"
			delete(after, "sub/deep/y")
			delete(after, "f3")
			crashes := t.TempDir()
			var steps []string
			w.step = func(step string) {
				snap := filepath.Join(crashes, fmt.Sprintf("%02d-%s", len(steps), step))
				copyTree(t, dir, snap)
				steps = append(steps, snap)
			}
			var spares []os.FileInfo
			for _, obj := range w.recycle.spares {
				fi, err := os.Stat(filepath.Join(dir, obj))
				if err != nil {
					t.Fatal(err)
				}
				spares = append(spares, fi)
			}
			mustApply(t, w, batch(5, put("a", "A2"), put("sub/b", "B4"), put("new/n", "N"), put("f2", "F2b"),
				del("sub/deep/y"), del("f3")))
			reused := 0
			for obj := range reachable(t, dir) {
				fi, _ := os.Stat(filepath.Join(dir, obj))
				if slices.ContainsFunc(spares, func(s os.FileInfo) bool { return os.SameFile(s, fi) }) {
					reused++
				}
			}
			if reused == 0 {
				t.Error("no spare was reused")
			}
			for _, snap := range steps {
				t.Run(filepath.Base(snap), func(t *testing.T) {
					checkCrashState(t, Atomic, snap, live, after)
					checkRecovery(t, Atomic, snap, after, above, below)
				})
			}
		})
	}
}
