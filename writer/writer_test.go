package writer

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func TestAtomicFullSyncCreatesLayout(t *testing.T) {
	w, dir := open(t, Atomic)
	want := tree{"cert.pem": "C", "sub/a": "A", "sub/dir/b": "B"}
	res := mustApply(t, w, full(1, want))
	if !res.Changed || res.Written != 3 || res.Removed != 0 || res.Skipped != 0 {
		t.Errorf("Result = %+v, want Changed and 3 written", res)
	}
	target, data := dataTree(t, dir)
	if !versionName.MatchString(target) {
		t.Errorf("..data -> %q, not a version directory name", target)
	}
	assertTree(t, "..data", data, want)
	for _, name := range []string{"cert.pem", "sub"} {
		if got, err := os.Readlink(filepath.Join(dir, name)); err != nil || got != "..data/"+name {
			t.Errorf("%s -> %q (%v), want ..data/%s", name, got, err, name)
		}
	}
	assertTree(t, "visible", visible(t, dir), want)
	assertFiles(t, w, want)
	if got := names(t, dir); len(got) != 7 { // ..data, objects for /, sub and sub/dir, the lock, cert.pem, sub
		t.Errorf("target holds %v", got)
	}
}

func TestAtomicReaderSeesAllOldOrAllNew(t *testing.T) {
	w, dir := open(t, Atomic)
	old := tree{"cert.pem": "old cert", "key.pem": "old key", "sub/x": "old x"}
	mustApply(t, w, full(1, old))
	resolved, _ := dataTree(t, dir) // a reader resolves ..data once...

	mustApply(t, w, batch(2, put("cert.pem", "new cert"), put("key.pem", "new key"), put("sub/x", "new x")))

	// ...and keeps reading the complete old tree after the swap,
	assertTree(t, "old version after the swap", versionTree(t, filepath.Join(dir, resolved)), old)
	// while a reader resolving now sees the complete new one.
	_, now := dataTree(t, dir)
	assertTree(t, "new version", now, tree{"cert.pem": "new cert", "key.pem": "new key", "sub/x": "new x"})
}

func TestAtomicKeepsOnlyThePreviousVersion(t *testing.T) {
	w, dir := open(t, Atomic)
	var versions []string
	for i, v := range []string{"1", "2", "3", "4"} {
		mustApply(t, w, batch(int64(i+1), put("a", v)))
		target, _ := dataTree(t, dir)
		versions = append(versions, target)
	}
	w.waitPrune() // the retired objects go in the background, after Apply returns
	var got []string
	for _, n := range names(t, dir) {
		if versionName.MatchString(n) {
			got = append(got, n)
		}
	}
	if want := versions[2:]; !slices.Equal(got, want) {
		t.Errorf("version directories %v, want %v", got, want)
	}
}

// TestAtomicTidyRemovesWhatApplyLeft: a one-key change leaves the version before the
// previous one for Tidy (the caller's signal comes first); Tidy removes it, and without
// Tidy the next Apply does, before it stages.
func TestAtomicTidyRemovesWhatApplyLeft(t *testing.T) {
	w, dir := open(t, Atomic)
	versions := func() (n int) {
		for _, name := range names(t, dir) {
			if versionName.MatchString(name) {
				n++
			}
		}
		return n
	}
	for i := range 3 {
		mustApply(t, w, batch(int64(i+1), put("a", string(rune('0'+i)))))
	}
	if n := versions(); n != 3 {
		t.Fatalf("%d version directories before Tidy, want 3 (live, previous, left for Tidy)", n)
	}
	w.Tidy()
	if n := versions(); n != 2 {
		t.Fatalf("%d version directories after Tidy, want 2", n)
	}
	mustApply(t, w, batch(4, put("a", "3")))
	mustApply(t, w, batch(5, put("a", "4")))
	if n := versions(); n != 3 {
		t.Fatalf("%d version directories after two changes without Tidy, want 3", n)
	}
	assertTree(t, "target", visible(t, dir), tree{"a": "4"})
}

func TestDeleteRemovesFileAndEmptyDirectories(t *testing.T) {
	for _, layout := range layouts {
		t.Run(layout.String(), func(t *testing.T) {
			w, dir := open(t, layout)
			mustApply(t, w, full(1, tree{"top": "T", "sub/dir/a": "A", "sub/b": "B", "other/c": "C"}))
			res := mustApply(t, w, batch(2, del("sub/dir/a"), del("other/c")))
			if !res.Changed || res.Removed != 2 || res.Written != 0 {
				t.Errorf("Result = %+v", res)
			}
			want := tree{"top": "T", "sub/b": "B"}
			assertTree(t, "visible", visible(t, dir), want)
			assertFiles(t, w, want)
			for _, gone := range []string{"sub/dir", "other"} {
				if _, err := os.Lstat(filepath.Join(dir, gone)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s still exists (%v)", gone, err)
				}
			}
			if layout == Atomic {
				_, data := dataTree(t, dir)
				assertTree(t, "..data", data, want)
			}
		})
	}
}

func TestNestedKeysBecomeDirectories(t *testing.T) {
	for _, layout := range layouts {
		t.Run(layout.String(), func(t *testing.T) {
			w, dir := open(t, layout)
			want := tree{"a/b/c/d/e": "deep", "a/b/f": "F", "a/g": "G"}
			mustApply(t, w, full(1, want))
			assertTree(t, "visible", visible(t, dir), want)
			mustApply(t, w, batch(2, put("a/b/c/x", "X")))
			want["a/b/c/x"] = "X"
			assertTree(t, "visible", visible(t, dir), want)
		})
	}
}

func TestIdenticalPutChangesNothing(t *testing.T) {
	for _, layout := range layouts {
		t.Run(layout.String(), func(t *testing.T) {
			w, dir := open(t, layout)
			mustApply(t, w, full(1, tree{"a": "same", "sub/b": "B"}))
			before := snapshotNames(t, dir)
			fi1, _ := os.Stat(filepath.Join(dir, "a"))
			res := mustApply(t, w, batch(2, put("a", "same"), put("sub/b", "B")))
			if res.Changed || res.Written != 0 || res.Removed != 0 {
				t.Errorf("Result = %+v, want no change", res)
			}
			res = mustApply(t, w, batch(3, put("a", "other"), put("a", "same")))
			if res.Changed {
				t.Errorf("a put and its undo in one batch changed something: %+v", res)
			}
			res = mustApply(t, w, batch(4, del("missing")))
			if res.Changed {
				t.Errorf("deleting a missing key changed something: %+v", res)
			}
			if after := snapshotNames(t, dir); !slices.Equal(before, after) {
				t.Errorf("entries changed from %v to %v", before, after)
			}
			fi2, _ := os.Stat(filepath.Join(dir, "a"))
			if !os.SameFile(fi1, fi2) {
				t.Error("file a was rewritten")
			}
		})
	}
}

// snapshotNames lists the top level and, for the Atomic layout, where ..data points.
func snapshotNames(t *testing.T, dir string) []string {
	ns := names(t, dir)
	if target, err := os.Readlink(filepath.Join(dir, "..data")); err == nil {
		ns = append(ns, "..data -> "+target)
	}
	return ns
}

func TestHostileKeysAreSkippedAndTheRestApplies(t *testing.T) {
	for _, layout := range layouts {
		t.Run(layout.String(), func(t *testing.T) {
			w, dir := open(t, layout)
			parent := filepath.Dir(dir)
			hostile := []string{"../escape", "a/../../escape", "a//b", "/abs", "b/", ".", "..data", "..foo/x",
				"x\x00y", strings.Repeat("n", 300), "../" + filepath.Base(dir) + "/sneaky"}
			b := batch(1, put("good", "G"), put("dir/good", "D"))
			for _, k := range hostile {
				b.Changes = append(b.Changes, put(k, "evil"))
			}
			res := mustApply(t, w, b)
			if res.Skipped != len(hostile) || res.Written != 2 || !res.Changed {
				t.Errorf("Result = %+v, want %d skipped and 2 written", res, len(hostile))
			}
			want := tree{"good": "G", "dir/good": "D"}
			assertTree(t, "visible", visible(t, dir), want)
			if got := names(t, parent); !slices.Equal(got, []string{"target"}) {
				t.Errorf("beside the target: %v", got)
			}
			res = mustApply(t, w, batch(2, del("../escape"), del("good")))
			if res.Skipped != 1 || res.Removed != 1 {
				t.Errorf("Result = %+v, want 1 skipped and 1 removed", res)
			}
		})
	}
}

func TestFileVersusDirectoryTheDirectoryWins(t *testing.T) {
	for _, layout := range layouts {
		for _, order := range []struct {
			name    string
			batches []Batch
		}{
			{"file first", []Batch{batch(1, put("a", "file")), batch(2, put("a/b", "child"))}},
			{"child first", []Batch{batch(1, put("a/b", "child")), batch(2, put("a", "file"))}},
			{"one batch", []Batch{batch(1, put("a", "file"), put("a/b", "child"))}},
			{"one batch reversed", []Batch{batch(1, put("a/b", "child"), put("a", "file"))}},
			{"full", []Batch{full(1, tree{"a": "file", "a/b": "child"})}},
		} {
			t.Run(layout.String()+"/"+order.name, func(t *testing.T) {
				w, dir := open(t, layout)
				skipped := 0
				for _, b := range order.batches {
					skipped += mustApply(t, w, b).Skipped
				}
				if skipped == 0 {
					t.Error("the shadowed key a was not reported as skipped")
				}
				assertTree(t, "with a child", visible(t, dir), tree{"a/b": "child"})

				// While hidden, a changes; the latest value is what comes back.
				if res := mustApply(t, w, batch(10, put("a", "latest"))); res.Changed || res.Skipped != 1 {
					t.Errorf("updating a hidden key: %+v, want no change and 1 skipped", res)
				}
				res := mustApply(t, w, batch(11, del("a/b")))
				if !res.Changed {
					t.Errorf("deleting the last child: %+v", res)
				}
				assertTree(t, "after the child is gone", visible(t, dir), tree{"a": "latest"})
				assertFiles(t, w, tree{"a": "latest"})

				// And it hides again, with its value remembered from disk.
				mustApply(t, w, batch(12, put("a/c/d", "deep")))
				assertTree(t, "with a new child", visible(t, dir), tree{"a/c/d": "deep"})
				mustApply(t, w, batch(13, del("a/c/d")))
				assertTree(t, "back again", visible(t, dir), tree{"a": "latest"})
			})
		}
	}
}

func TestAtomicForeignTopLevelEntriesAreNeverTouched(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "target")
	writeFile(t, filepath.Join(dir, "cert.pem"), "foreign cert")
	writeFile(t, filepath.Join(dir, "keep/me"), "foreign dir")
	writeFile(t, filepath.Join(dir, "unrelated"), "foreign")
	if err := os.Symlink("..data/planted", filepath.Join(dir, "planted-elsewhere")); err != nil {
		t.Fatal(err)
	}
	w := openAt(t, Options{Dir: dir, UID: -1, GID: -1})
	res := mustApply(t, w, full(1, tree{"cert.pem": "ours", "keep/x": "X", "fine": "F"}))
	if !res.Changed {
		t.Errorf("Result = %+v", res)
	}
	if got := readFile(t, filepath.Join(dir, "cert.pem")); got != "foreign cert" {
		t.Errorf("foreign cert.pem overwritten: %q", got)
	}
	if got := readFile(t, filepath.Join(dir, "..data/cert.pem")); got != "ours" {
		t.Errorf("..data/cert.pem = %q", got)
	}
	if got := readFile(t, filepath.Join(dir, "keep/me")); got != "foreign dir" {
		t.Errorf("keep/me = %q", got)
	}
	// A Full batch without those keys, and deletes, leave the foreign entries alone.
	mustApply(t, w, full(2, tree{"fine": "F2"}))
	mustApply(t, w, batch(3, del("fine")))
	for name, want := range map[string]string{"cert.pem": "foreign cert", "keep/me": "foreign dir", "unrelated": "foreign"} {
		if got := readFile(t, filepath.Join(dir, name)); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, "planted-elsewhere")); err != nil {
		t.Errorf("a symlink not named after its target was removed: %v", err)
	}
}

func TestFullBatchDeletesVanishedKeys(t *testing.T) {
	for _, layout := range layouts {
		t.Run(layout.String(), func(t *testing.T) {
			w, dir := open(t, layout)
			mustApply(t, w, full(1, tree{"a": "A", "b": "B", "d/c": "C", "d/e": "E"}))
			want := tree{"a": "A2", "d/e": "E", "new": "N"}
			res := mustApply(t, w, full(2, want))
			if !res.Changed || res.Written != 2 || res.Removed != 2 {
				t.Errorf("Result = %+v, want 2 written and 2 removed", res)
			}
			assertTree(t, "visible", visible(t, dir), want)
			assertFiles(t, w, want)
		})
	}
}

func TestReopenKeepsState(t *testing.T) {
	for _, layout := range layouts {
		t.Run(layout.String(), func(t *testing.T) {
			w, dir := open(t, layout)
			want := tree{"a": "A", "sub/b": "B", "sub/deeper/c": "C"}
			mustApply(t, w, full(1, want))
			before := snapshotNames(t, dir)
			w.Close()

			w = openAt(t, Options{Dir: dir, Layout: layout, UID: -1, GID: -1})
			assertFiles(t, w, want)
			if res := mustApply(t, w, full(2, want)); res.Changed || res.Written != 0 || res.Removed != 0 {
				t.Errorf("Full batch with the same content after reopening: %+v", res)
			}
			if after := snapshotNames(t, dir); !slices.Equal(before, after) {
				t.Errorf("entries changed from %v to %v", before, after)
			}
			// Deletes after a restart still remove what we created, directories included.
			mustApply(t, w, batch(3, del("sub/b"), del("sub/deeper/c")))
			assertTree(t, "visible", visible(t, dir), tree{"a": "A"})
			if _, err := os.Lstat(filepath.Join(dir, "sub")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("sub survived: %v", err)
			}
		})
	}
}

func TestAtomicOpenCleansLeftovers(t *testing.T) {
	w, dir := open(t, Atomic)
	mustApply(t, w, full(1, tree{"a": "A"}))
	mustApply(t, w, full(2, tree{"a": "A2"}))
	live, _ := dataTree(t, dir)
	w.Close()
	stray := "..2001_01_01_00_00_00.000000001"
	writeFile(t, filepath.Join(dir, stray, "half"), "written")
	if err := os.Symlink(stray, filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "..someone-elses"), "keep")

	w = openAt(t, Options{Dir: dir, UID: -1, GID: -1})
	got := names(t, dir)
	want := []string{"..data", "..someone-elses", lockName, live, "a"}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("after Open: %v, want %v", got, want)
	}
	assertFiles(t, w, tree{"a": "A2"})
}

func TestAtomicDanglingAndMissingLinksAreHealed(t *testing.T) {
	w, dir := open(t, Atomic)
	want := tree{"a": "A", "sub/b": "B"}
	mustApply(t, w, full(1, want))
	w.Close()
	// What a crash between the swap and the link step leaves: a new name not linked yet, and
	// a removed name still linked.
	if err := os.Remove(filepath.Join(dir, "a")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..data/gone", filepath.Join(dir, "gone")); err != nil {
		t.Fatal(err)
	}

	w = openAt(t, Options{Dir: dir, UID: -1, GID: -1})
	res := mustApply(t, w, full(2, want))
	if !res.Changed || res.Written != 0 {
		t.Errorf("Result = %+v, want Changed (links healed) with nothing written", res)
	}
	assertTree(t, "visible", visible(t, dir), want)
	if _, err := os.Lstat(filepath.Join(dir, "gone")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dangling link gone survived: %v", err)
	}
	if res := mustApply(t, w, full(3, want)); res.Changed {
		t.Errorf("second Full batch: %+v, want no change", res)
	}
}

func TestModeAndOwnerAreApplied(t *testing.T) {
	root := os.Geteuid() == 0
	for _, layout := range layouts {
		t.Run(layout.String(), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "target")
			opts := Options{Dir: dir, Layout: layout, Mode: 0o640, UID: -1, GID: -1}
			if root {
				opts.UID, opts.GID = 12345, 23456
			}
			w := openAt(t, opts)
			mustApply(t, w, full(1, tree{"a": "A", "sub/dir/b": "B"}))
			base := dir
			if layout == Atomic {
				target, _ := dataTree(t, dir)
				base = filepath.Join(dir, target)
				checkOwnerMode(t, base, 0o750, opts.UID, opts.GID)
			}
			checkOwnerMode(t, filepath.Join(base, "a"), 0o640, opts.UID, opts.GID)
			checkOwnerMode(t, filepath.Join(base, "sub"), 0o750, opts.UID, opts.GID)
			checkOwnerMode(t, filepath.Join(base, "sub/dir/b"), 0o640, opts.UID, opts.GID)
			w.Close()

			// Reopened with another mode (and owner), the same content is rewritten with it.
			opts.Mode = 0o644
			if root {
				opts.UID, opts.GID = 0, 0
			}
			w = openAt(t, opts)
			res := mustApply(t, w, full(2, tree{"a": "A", "sub/dir/b": "B"}))
			if !res.Changed || res.Written != 2 {
				t.Errorf("after a mode change: %+v, want both files rewritten", res)
			}
			if layout == Atomic {
				target, _ := dataTree(t, dir)
				base = filepath.Join(dir, target)
				checkOwnerMode(t, filepath.Join(base, "sub/dir"), 0o755, opts.UID, opts.GID)
			}
			checkOwnerMode(t, filepath.Join(base, "a"), 0o644, opts.UID, opts.GID)
			checkOwnerMode(t, filepath.Join(base, "sub/dir/b"), 0o644, opts.UID, opts.GID)
			if res := mustApply(t, w, full(3, tree{"a": "A", "sub/dir/b": "B"})); res.Changed {
				t.Errorf("again: %+v, want no change", res)
			}
		})
	}
}

func checkOwnerMode(t *testing.T, name string, mode os.FileMode, uid, gid int) {
	t.Helper()
	fi, err := os.Stat(name) // a subdirectory of a version is a symlink to its object
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != mode {
		t.Errorf("%s: mode %v, want %v", name, fi.Mode().Perm(), mode)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if uid != -1 && int(st.Uid) != uid || gid != -1 && int(st.Gid) != gid {
		t.Errorf("%s: owner %d:%d, want %d:%d", name, st.Uid, st.Gid, uid, gid)
	}
}

func TestCheckFailureKeepsOldVersionAndNextApplyRetries(t *testing.T) {
	for _, layout := range layouts {
		t.Run(layout.String(), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "target")
			var seen []tree
			fail := errors.New("nginx -t says no")
			check := func(staged string) error {
				if !filepath.IsAbs(staged) {
					t.Errorf("Check got a relative path %q", staged)
				}
				seen = append(seen, versionTree(t, staged))
				if len(seen) == 2 {
					return fail
				}
				return nil
			}
			w := openAt(t, Options{Dir: dir, Layout: layout, UID: -1, GID: -1, Check: check})
			old := tree{"cert.pem": "old", "key.pem": "old"}
			mustApply(t, w, full(1, old))
			var before string
			if layout == Atomic {
				before, _ = dataTree(t, dir)
			}

			_, err := w.Apply(batch(2, put("cert.pem", "new"), put("key.pem", "new")))
			if !errors.Is(err, fail) {
				t.Fatalf("Apply = %v, want the Check error", err)
			}
			assertTree(t, "what Check saw", seen[1], tree{"cert.pem": "new", "key.pem": "new"})
			assertTree(t, "live after a failed check", visible(t, dir), old)
			assertFiles(t, w, old)
			if layout == Atomic {
				if after, _ := dataTree(t, dir); after != before {
					t.Errorf("..data moved from %s to %s", before, after)
				}
				for _, n := range names(t, dir) {
					if versionName.MatchString(n) && n != before {
						t.Errorf("the rejected version %s was left behind", n)
					}
				}
			} else {
				for _, n := range names(t, dir) {
					if strings.HasPrefix(n, "..tmp") {
						t.Errorf("the rejected staging %s was left behind", n)
					}
				}
			}

			res := mustApply(t, w, batch(3))
			if !res.Changed || res.Written != 2 {
				t.Errorf("retry: %+v, want the two files written", res)
			}
			assertTree(t, "live after the retry", visible(t, dir), tree{"cert.pem": "new", "key.pem": "new"})
		})
	}
}

func TestOpenRejectsBadOptions(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"no dir", Options{UID: -1, GID: -1}},
		{"bad layout", Options{Dir: dir, Layout: 7, UID: -1, GID: -1}},
		{"mode with type bits", Options{Dir: dir, Mode: os.ModeSetuid | 0o600, UID: -1, GID: -1}},
		{"bad uid", Options{Dir: dir, UID: -2, GID: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if w, err := Open(tc.opts); err == nil {
				w.Close()
				t.Error("Open succeeded")
			}
		})
	}
}

func TestAtomicRefusesADataEntryThatIsNotOurs(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "..data/x"), "someone else's")
	if w, err := Open(Options{Dir: dir, UID: -1, GID: -1, Logger: testLogger(t)}); err == nil {
		w.Close()
		t.Fatal("Open accepted a ..data directory")
	}
	if got := readFile(t, filepath.Join(dir, "..data/x")); got != "someone else's" {
		t.Errorf("..data/x = %q", got)
	}
}

func TestPlantedSymlinksAreNeverFollowed(t *testing.T) {
	for _, layout := range layouts {
		t.Run(layout.String(), func(t *testing.T) {
			base := t.TempDir()
			dir := filepath.Join(base, "target")
			writeFile(t, filepath.Join(dir, "victim/file"), "precious")
			// sub -> victim: writes to sub/... must not land in victim/.
			if err := os.Symlink("victim", filepath.Join(dir, "sub")); err != nil {
				t.Fatal(err)
			}
			w := openAt(t, Options{Dir: dir, Layout: layout, UID: -1, GID: -1})
			res := mustApply(t, w, full(1, tree{"sub/file": "evil", "sub/new": "evil", "ok": "fine"}))
			if layout == Plain && res.Skipped != 2 {
				t.Errorf("Result = %+v, want the two keys under the symlink skipped", res)
			}
			if got := names(t, filepath.Join(dir, "victim")); !slices.Equal(got, []string{"file"}) {
				t.Errorf("victim/ holds %v", got)
			}
			if got := readFile(t, filepath.Join(dir, "victim/file")); got != "precious" {
				t.Errorf("victim/file = %q", got)
			}
			mustApply(t, w, full(2, tree{}))
			if got := readFile(t, filepath.Join(dir, "victim/file")); got != "precious" {
				t.Errorf("after deleting everything victim/file = %q", got)
			}
			if target, err := os.Readlink(filepath.Join(dir, "sub")); err != nil || target != "victim" {
				t.Errorf("the planted link changed: %q %v", target, err)
			}
		})
	}
}

func TestOpenRefusesATargetOthersCanWrite(t *testing.T) {
	for _, mode := range []os.FileMode{0o777, 0o702, 0o1777} {
		dir := filepath.Join(t.TempDir(), "target")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, mode); err != nil {
			t.Fatal(err)
		}
		_, err := Open(Options{Dir: dir, UID: -1, GID: -1})
		if err == nil || !strings.Contains(err.Error(), "writable by other users") || !strings.Contains(err.Error(), "chmod go-w") {
			t.Errorf("mode %v: Open error %v, want a refusal that names the fix", mode, err)
		}
	}
}

// A change makes new directory objects only on its path; every other directory is shared
// with the previous version, and its files are the same inodes.
func TestAtomicChangeSharesUnchangedDirectories(t *testing.T) {
	w, dir := open(t, Atomic)
	mustApply(t, w, full(1, tree{"top": "T", "d1/a": "A", "d1/deep/b": "B", "d2/c": "C", "d2/x/y/z": "Z"}))
	link := func(p string) string {
		t.Helper()
		target, err := os.Readlink(filepath.Join(dir, "..data", p))
		if err != nil {
			t.Fatal(err)
		}
		return target
	}
	objects := func() int {
		n := 0
		for _, name := range names(t, dir) {
			if versionName.MatchString(name) {
				n++
			}
		}
		return n
	}
	d2, x, deep, before := link("d2"), link("d2/x"), link("d1/deep"), objects()
	fiC, _ := os.Stat(filepath.Join(dir, "d2/c"))
	mustApply(t, w, batch(2, put("d1/a", "A2")))
	if link("d2") != d2 || link("d2/x") != x || link("d1/deep") != deep {
		t.Error("a directory off the changed path got a new object")
	}
	if fi, _ := os.Stat(filepath.Join(dir, "d2/c")); !os.SameFile(fi, fiC) {
		t.Error("a file off the changed path was copied")
	}
	if got := objects() - before; got != 2 { // new objects for / and d1; the old ones stay
		t.Errorf("%d new directory objects for a change in d1, want 2", got)
	}
	assertTree(t, "visible", visible(t, dir), tree{"top": "T", "d1/a": "A2", "d1/deep/b": "B", "d2/c": "C", "d2/x/y/z": "Z"})
}

// A target written by an earlier release (versions with real subdirectories) is taken over:
// the first batch rebuilds it in shared directory objects and the old version goes.
func TestAtomicVersionWithRealSubdirectoriesIsRebuilt(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "target")
	old := "..2025_01_01_00_00_00.000000000"
	want := tree{"a": "A", "sub/b": "B", "sub/deep/c": "C"}
	for p, v := range want {
		writeFile(t, filepath.Join(dir, old, p), v)
	}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if d.IsDir() {
			os.Chmod(p, 0o700)
		} else {
			os.Chmod(p, 0o600)
		}
		return err
	})
	for _, l := range [][2]string{{old, "..data"}, {"..data/a", "a"}, {"..data/sub", "sub"}} {
		if err := os.Symlink(l[0], filepath.Join(dir, l[1])); err != nil {
			t.Fatal(err)
		}
	}
	w := openAt(t, Options{Dir: dir, UID: -1, GID: -1})
	assertFiles(t, w, want)
	if res := mustApply(t, w, full(1, want)); !res.Changed {
		t.Errorf("Result = %+v, want the version rebuilt", res)
	}
	assertTree(t, "visible", visible(t, dir), want)
	if _, err := os.Lstat(filepath.Join(dir, old)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the old version stayed: %v", err)
	}
	if fi, err := os.Lstat(filepath.Join(dir, "..data", "sub")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("..data/sub is not a link to a shared directory: %v", err)
	}
	if res := mustApply(t, w, full(2, want)); res.Changed {
		t.Errorf("again: %+v, want no change", res)
	}
	mustApply(t, w, batch(3, put("sub/deep/c", "C3")))
	want["sub/deep/c"] = "C3"
	assertTree(t, "after a change", visible(t, dir), want)
}
