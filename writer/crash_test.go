package writer

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCrashAtEveryStepConverges copies the target at every step of Apply (what a kill -9
// there would leave), then checks on each copy that readers see a whole old or new tree, and
// that Open plus a Full batch converge to the new tree and clean every leftover.
func TestCrashAtEveryStepConverges(t *testing.T) {
	old := tree{"a": "A1", "sub/b": "B1", "gone": "G", "dir/x": "X", "sub/deep/y": "Y", "keep/deep/k": "K"}
	next := tree{"a": "A2", "sub/b": "B1", "new/c": "C", "sub/n": "N", "dir": "a file now", "keep/deep/k": "K"}
	for _, layout := range layouts {
		for _, tc := range []struct {
			name       string
			before     tree
			after      tree
			firstBatch bool
			streamed   bool // the new tree comes as a streamed full batch, in pages
		}{
			{"first sync", nil, old, true, false},
			{"update", old, next, false, false},
			{"streamed first sync", nil, old, true, true},
			{"streamed update", old, next, false, true},
			// New top-level names: the stream links them while it arrives, dangling until the swap.
			{"streamed update with new names", old, withNewNames(next), false, true},
		} {
			t.Run(layout.String()+"/"+tc.name, func(t *testing.T) {
				w, dir := open(t, layout)
				if !tc.firstBatch {
					mustApply(t, w, full(1, tc.before))
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
							checkRecovery(t, layout, back, tc.before)
						}
						checkRecovery(t, layout, snap, tc.after)
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
func checkRecovery(t *testing.T, layout Layout, dir string, want tree) {
	w := openAt(t, Options{Dir: dir, Layout: layout, UID: -1, GID: -1})
	mustApply(t, w, full(3, want))
	assertTree(t, "after recovery", visible(t, dir), want)
	assertFiles(t, w, want)
	if layout == Atomic {
		_, data := dataTree(t, dir)
		assertTree(t, "..data after recovery", data, want)
	}
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
