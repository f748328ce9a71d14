package writer

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Random changes of a nested tree, flat and bucketed: after each Apply (and Tidy, or not) the
// target shows the model, the version before stays whole for its readers, and every file
// in a directory object is a value of the live or the previous version: a spare keeps no
// older value.
func TestRecycledObjectsShowTheModelAndKeepNoOldValue(t *testing.T) {
	for _, bucketed := range []bool{false, true} {
		t.Run(fmt.Sprintf("bucketed=%v", bucketed), func(t *testing.T) {
			w, dir := open(t, Atomic)
			if bucketed {
				w.bucketAbove, w.flatBelow = 8, 6
			}
			rng := rand.New(rand.NewPCG(1, 2))
			keys := []string{"a", "b", "c", "d/x", "d/y", "d/z", "d/e/f", "d/e/g", "h/i", "h", "d/e", "k1", "k2", "k3",
				"k4", "k5", "k6", "k7", "k8", "k9"}
			model := tree{}
			for _, k := range keys {
				model[k] = "0"
			}
			mustApply(t, w, full(1, model))
			prev, last := tree{}, tree{}
			for k, v := range model {
				last[k] = v
			}
			recycled := 0
			for rev := int64(2); rev < 300; rev++ {
				var changes []Change
				for range 1 + rng.IntN(3) {
					k := keys[rng.IntN(len(keys))]
					if rng.IntN(5) == 0 {
						delete(model, k)
						changes = append(changes, del(k))
					} else {
						v := fmt.Sprint(rev, k)
						model[k] = v
						changes = append(changes, put(k, v))
					}
				}
				before := len(w.recycle.spares)
				res := mustApply(t, w, batch(rev, changes...))
				if res.Changed { // the previous version is the one before the last change
					prev = last
				}
				last = tree{}
				for k, v := range model {
					last[k] = v
				}
				if len(w.recycle.spares) < before {
					recycled++
				}
				assertTree(t, fmt.Sprintf("rev %d", rev), visible(t, dir), shown(model))
				if !checkManifests(t, w, dir) { // what the writer knows of its objects is true
					t.Fatalf("rev %d changes %v", rev, changes)
				}
				if rng.IntN(4) != 0 {
					w.Tidy()
					if !checkNoOldValue(t, dir, model, prev) {
						t.Fatalf("rev %d changes %v: spares %v, retired %v", rev, changes, w.recycle.spares, w.retired)
					}
				}
			}
			if recycled == 0 {
				t.Error("no spare was ever used")
			}
		})
	}
}

// shown is what the target shows of model: a key with keys below it is a directory.
func shown(model tree) tree {
	out := tree{}
	for k, v := range model {
		below := false
		for o := range model {
			below = below || strings.HasPrefix(o, k+"/")
		}
		if !below {
			out[k] = v
		}
	}
	return out
}

// checkNoOldValue checks that every file in the target's objects holds a value of now or
// before (readers of the previous version keep it until the next change).
func checkNoOldValue(t *testing.T, dir string, now, before tree) bool {
	t.Helper()
	ok := true
	values := map[string]bool{}
	for _, v := range now {
		values[v] = true
	}
	for _, v := range before {
		values[v] = true
	}
	for _, n := range names(t, dir) {
		if !versionName.MatchString(n) {
			continue
		}
		for _, f := range names(t, filepath.Join(dir, n)) {
			p := filepath.Join(dir, n, f)
			if fi, err := os.Lstat(p); err != nil || !fi.Mode().IsRegular() {
				continue
			}
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !values[string(data)] {
				t.Errorf("%s holds %q, a value of neither the live nor the previous version", strings.TrimPrefix(p, dir), data)
				ok = false
			}
		}
	}
	return ok
}

// A change of one key in a directory that has a spare creates only what the spare lacks: the
// spare becomes the new object, and the objects in the target stay few.
func TestOneKeyChangeReusesTheDirectorysSpare(t *testing.T) {
	w, dir := open(t, Atomic)
	w.bucketAbove, w.flatBelow = 8, 6
	model := tree{}
	for i := range 20 {
		model[fmt.Sprintf("k%02d", i)] = "0"
	}
	// Neighbours of k07 in its leaf bucket, which the spare keeps.
	for i, n := 0, 0; n < 5; i++ {
		if name := fmt.Sprint("n", i); bucketDir(name) == bucketDir("k07") {
			model[name] = "N"
			n++
		}
	}
	mustApply(t, w, full(1, model))
	for rev := int64(2); rev < 8; rev++ {
		mustApply(t, w, batch(rev, put("k07", fmt.Sprint(rev))))
		w.Tidy()
	}
	if len(w.recycle.spares) == 0 {
		t.Fatal("no spare after repeated changes of one key")
	}
	leaf := bucketDir("k07")
	spare := w.recycle.spares[leaf]
	var st os.FileInfo
	st, err := os.Stat(filepath.Join(dir, spare))
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, w, batch(8, put("k07", "8")))
	now, err := os.Stat(filepath.Join(dir, w.dirObj[leaf]))
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(st, now) {
		t.Errorf("the leaf bucket's new object is not its spare, renamed")
	}
	model["k07"] = "8"
	assertTree(t, "visible", visible(t, dir), model)
	w.Tidy()
	// Live, previous and one spare per directory on the path (root and three buckets).
	objects := 0
	for _, n := range names(t, dir) {
		if versionName.MatchString(n) {
			objects++
		}
	}
	if live := len(reachable(t, dir)); objects > live+2*4 {
		t.Errorf("%d objects, the live version reaches %d", objects, live)
	}
}

// checkManifests compares every manifest with its object on disk.
func checkManifests(t *testing.T, w *Writer, dir string) bool {
	ok := true
	for obj, m := range w.recycle.made {
		on := names(t, filepath.Join(dir, obj))
		if len(on) != len(m.names) {
			t.Errorf("%s (%s): %d names on disk %v, manifest %v", obj, m.dir, len(on), on, keysOf(m.names))
			ok = false
		}
		for _, n := range on {
			c, in := m.names[n]
			if !in {
				t.Errorf("%s: %s not in manifest", obj, n)
				ok = false
				continue
			}
			p := filepath.Join(dir, obj, n)
			if target, err := os.Readlink(p); err == nil {
				if "../"+c.obj != target {
					t.Errorf("%s: %s -> %s, manifest %s", obj, n, target, c.obj)
					ok = false
				}
				continue
			}
			data, _ := os.ReadFile(p)
			if sha256.Sum256(data) != c.sum {
				t.Errorf("%s: %s holds %q, not the manifest's", obj, n, data)
				ok = false
			}
		}
	}
	return ok
}

// Spares hold only links to live files, so they free no data when removed, but on tmpfs every
// hard link counts against the inode limit (nr_inodes), and elsewhere a directory takes a block.
// On a full disk the writer frees them with the previous version before it gives up.
func TestDiskFullFreesTheSpares(t *testing.T) {
	mnt := mountTmpfs(t, "size=4m,nr_inodes=2000")
	var logs bytes.Buffer
	dir := filepath.Join(mnt, "target")
	w := openAt(t, Options{Dir: dir, UID: -1, GID: -1, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	// d1 changes again and again: its old objects become spares (60 links each). d2 is
	// larger: a change of it needs more room (about 85 inodes) than the previous version
	// alone frees (about 64), and less than that and the spares (about 128).
	model := tree{}
	for i := range 60 {
		model[fmt.Sprintf("d1/f%02d", i)] = "1"
	}
	for i := range 80 {
		model[fmt.Sprintf("d2/g%02d", i)] = "2"
	}
	mustApply(t, w, full(1, model))
	for rev := int64(2); rev < 6; rev++ {
		mustApply(t, w, batch(rev, put("d1/f00", fmt.Sprint(rev))))
		w.Tidy()
	}
	model["d1/f00"] = "5"
	if _, ok := w.recycle.spares["d1"]; !ok {
		t.Fatal("d1 has no spare after four changes")
	}
	// Fill the inodes left, with empty files beside the target.
	filler := filepath.Join(mnt, "filler")
	if err := os.Mkdir(filler, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		f, err := os.Create(filepath.Join(filler, fmt.Sprint(i)))
		if err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
		f.Close()
	}
	if _, err := w.Apply(batch(6, put("d2/g00", "6"))); err != nil {
		t.Fatalf("a change that fits once the previous version and the spares are gone failed: %v", err)
	}
	model["d2/g00"] = "6"
	assertTree(t, "visible", visible(t, dir), model)
	if !strings.Contains(logs.String(), "no space left") {
		t.Errorf("no log line says no space left:\n%s", logs.String())
	}
}
